"""A pooling service: every pooling operation of modern deep learning over HTTP."""

__version__ = "0.1.0"
