"""Models: open_clip classifiers (``clip``), safe checkpoint IO (``checkpoints``), the embedded world."""
