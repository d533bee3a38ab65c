"""Whether Fashion-MNIST is installed, for the tests of the embedded world (they skip without it)."""

import pytest

from streams import fashion

try:
    fashion.find_root()
    HAVE_DATA = True
except fashion.FashionMNISTError:
    HAVE_DATA = False

#: mark a test that reads Fashion-MNIST
needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)"
)
