"""asv's per-commit install step (asv.conf.json ``install_command``): the commit's prebuilt vLLM
wheel, verified to be that commit (``moebench.wheels``).

asv runs it with the environment's interpreter before moebench is installed there, so the
package's source tree is put on the path.

    python scripts/asv_install.py --commit <full sha> [--checkout DIR] [--variant cu130]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from moebench.wheels import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
