"""Named errors raised by the headless core.

Every error a user can cause with bad input derives from :class:`HistoExprError`, so the GUI can
turn it into a napari notification and the CLI into a one-line message with a non-zero exit code.
"""

from __future__ import annotations


class HistoExprError(Exception):
    """Base class of all user-facing errors of napari-histoexpr."""


class SlideOpenError(HistoExprError, OSError):
    """A slide file is missing, unsupported, corrupt or cannot be decoded."""


class SpotDataError(HistoExprError, ValueError):
    """Spot data is malformed or inconsistent."""


class MissingScalefactorsError(SpotDataError):
    """A Space Ranger folder lacks ``spatial/scalefactors_json.json`` (or a needed key in it)."""


class NoTissueImageError(SpotDataError):
    """A Space Ranger folder has no usable tissue image (missing, blank or corrupt); its spots and
    counts can still be opened, in full-resolution pixel / µm coordinates."""


class BarcodeJoinError(SpotDataError):
    """Spot positions and counts do not share enough spot identifiers to be joined."""


class SpotsOutsideImageError(SpotDataError):
    """Spot coordinates lie outside the slide they are meant to be drawn on."""


class UnknownGeneError(HistoExprError, KeyError):
    """A gene name is not in the data. ``suggestions`` holds the closest names."""

    def __init__(self, gene: str, suggestions: list[str] | None = None):
        self.gene = gene
        self.suggestions = list(suggestions or [])
        msg = f"unknown gene {gene!r}"
        if self.suggestions:
            msg += f"; did you mean {', '.join(self.suggestions)}?"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class ManifestError(HistoExprError, ValueError):
    """A section manifest CSV is malformed or names files that do not exist."""


class ModelFileError(HistoExprError, ValueError):
    """A model file or folder is missing, corrupt, of another format version or incompatible."""


class SpotDataWarning(UserWarning):
    """Spot data opened with something missing (e.g. no tissue image to show under the spots)."""


class TrainingError(HistoExprError, RuntimeError):
    """Training cannot run with the given data or settings (too few spots, no genes, …)."""


class EncoderFileError(ModelFileError):
    """A pretrained encoder's weights file is missing, truncated, needs code to unpickle, or fits no
    known encoder layout; the message says what was expected."""


class GeoJSONError(HistoExprError, ValueError):
    """A GeoJSON file (e.g. a QuPath export) cannot be read, or holds no objects of the kind asked for."""


class GeneSetError(HistoExprError, ValueError):
    """A gene set is malformed, unknown, or shares too few genes with the data to be scored."""
