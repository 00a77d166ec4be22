"""The pipeline's stages, one module each (driver and its Ray tasks or actors); the list is in registry.py.

This package file stays empty: a Ray worker that runs one stage's CPU task imports this
package and that module only, never the others (and their torch).
"""
