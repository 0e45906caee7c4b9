"""Old home of the mock provider, kept for ``python -m tools.mock_provider``: it now lives in
hub/testing/mock_provider.py (importing this module gives that one)."""

import sys

from hub.testing import mock_provider as _mock_provider

if __name__ == "__main__":
    raise SystemExit(_mock_provider.main())
sys.modules[__name__] = _mock_provider
