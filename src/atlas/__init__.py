"""Atlas: a clustered, self-hosted remote-support site."""

__version__ = "0.1.0"
SOFTWARE_VERSION = __version__
