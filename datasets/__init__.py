"""The example datasets popkin ships (``popkin.data.examples`` reads them; see README.md).

Installed, this folder is the package ``popkin._library.datasets`` (see ``popkin/_library``);
this file makes it a package, for the build and for editable installs.
"""
