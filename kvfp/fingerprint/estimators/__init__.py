"""The classifier stack: scikit-learn estimators whose fitted state is plain arrays."""

from kvfp.fingerprint.estimators.fingerprinter import GENE_HEADS, Fingerprinter, Identification, gene_row
from kvfp.fingerprint.estimators.genes import GeneHeads
from kvfp.fingerprint.estimators.openset import OpenSetDetector
from kvfp.fingerprint.estimators.scheme import SchemeClassifier

# The only classes a saved classifier may name: persistence looks type names up here.
ESTIMATOR_TYPES = {c.__name__: c for c in (SchemeClassifier, GeneHeads, OpenSetDetector, Fingerprinter)}

__all__ = ["SchemeClassifier", "GeneHeads", "OpenSetDetector", "Fingerprinter", "Identification", "GENE_HEADS",
           "gene_row", "ESTIMATOR_TYPES"]
