"""hgrun: one-off containers and on-demand scripts, self-hosted."""

__version__ = "0.1.0"
