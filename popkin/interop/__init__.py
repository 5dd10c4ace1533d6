"""Other tools' formats into popkin's: NONMEM control streams (through pharmpy, the ``nonmem``
extra), CDISC ADPPK columns and FHIR R4 bundles.

ADPPK columns are read by :func:`popkin.read_dataset` itself (:mod:`popkin.data.adppk`): the
data layer comes before this one and may not import it.
"""

from .fhir import FhirError, FhirRecords, read_fhir_bundle
from .nonmem import (
    INSTALL_COMMAND, ImportCheck, MissingExtraError, NonmemImport, NonmemImportError,
    check_import, import_nonmem,
)

__all__ = ["INSTALL_COMMAND", "FhirError", "FhirRecords", "ImportCheck", "MissingExtraError",
           "NonmemImport", "NonmemImportError", "check_import", "import_nonmem",
           "read_fhir_bundle"]
