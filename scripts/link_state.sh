# Sourced by the recipe scripts: data/ and runs/ (data sets, caches, checkpoints; never committed)
# live outside the work tree, in $MELFUSION_STATE (default ~/.cache/melfusion-state), so that a
# work tree laid anew on the same machine finds a long training run where it stopped.
state=${MELFUSION_STATE:-$HOME/.cache/melfusion-state}
mkdir -p "$state"
for d in data runs; do
  if [ -L "$d" ] || [ ! -e "$d" ]; then
    mkdir -p "$state/$d"
    ln -sfn "$state/$d" "$d"
  fi
done
