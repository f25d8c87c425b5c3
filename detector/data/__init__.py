"""Datasets and loaders (boxes absolute xyxy float32; label 0 background, 1..K foreground); only
``build.build_dataset`` and ``build.build_dataloader`` read the config; each name is imported from
its module. See docs/architecture.md ("Data")."""
