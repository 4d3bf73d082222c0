"""The release number. The build reads it (pyproject.toml) and appends the wheel's
variant as a local label: 0.1.0+cpu, 0.1.0+cu130."""

__version__ = "0.1.0"
