"""posevla.training: the nested TrainConfig, named configs, checkpoints (`load_checkpoint`), two objectives, one loop."""
