"""`python -m captioner ...`: the `captioner` command without its console script.

torchrun starts training this way (`python -m torch.distributed.run ... -m captioner train
CONFIG`), which is why no library module needs a `__main__` block that imports the CLI.
"""

import sys

from .cli import main

sys.exit(main())
