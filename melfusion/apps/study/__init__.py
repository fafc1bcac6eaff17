"""The user-study app of the paper's appendix G (Figs. 4-6): build a study from generated sets,
serve it to raters, report mean, 95% CI and count per system and measure."""
