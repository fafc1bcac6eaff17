"""What people use in a browser or share: the shareable video, the spectrogram picture, the Gradio
demo (`melfusion serve`) and the user-study app of the paper's appendix G (`melfusion study`)."""
