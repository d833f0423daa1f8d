"""Package data: the LiFT modules the toolkit ships (``lift_<model_type>.safetensors``), installed with the package.

Found through :func:`liftkit.weights.locations.shipped_lift_path`; see ``pretrained/README.md`` at the repository root
for what each file is and how it was trained.
"""
