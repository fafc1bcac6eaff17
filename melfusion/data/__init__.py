"""Data: the SynthMeL generator, manifests, their checker and importers, and a torch Dataset."""
