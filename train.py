"""Train, validate and test the zoo's models: ``python train.py fit --config configs/vae/categorical.yaml``."""

from zoo.cli import main

if __name__ == "__main__":
    main()
