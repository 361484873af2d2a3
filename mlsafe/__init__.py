"""mlsafe: multilingual safety alignment via sparse weight editing.

A reproduction of Liang, Wang & Wang, "Multilingual Safety Alignment Via Sparse
Weight Editing" (arXiv 2602.22554). See the book for the method and results.
"""

__version__ = "0.1.0"
