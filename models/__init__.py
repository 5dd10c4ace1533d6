"""popkin's model library: the TOML specs in this folder (``popkin models`` lists them).

Installed, this folder is the package ``popkin._library.models`` (see ``popkin/_library``);
this file makes it a package, for the build and for editable installs.
"""
