"""Code correctness, the judge of code data: pull the program out of a response, check it statically, and run it
against assert tests in a sandbox. This module is the public face; the work is split by concern:

- `fusechat3.scoring.code_extract`: the program in a response (`extract_code`, `code_blocks`) and the static
  check that settles it without running it (`undefined_names`, `static_verdict`);
- `fusechat3.scoring.sandbox`: the isolated subprocess that runs it (`run_tests`, `describe_isolation`), with
  what it protects against and what it does not;
- `fusechat3.scoring.sandbox_pool`: many programs, in batches, in a pool here or as Ray CPU tasks
  (`run_tests_many`, `pool_size`; one batch: `sandbox.run_batch`);
- `fusechat3.scoring.sandbox_child`: the harness that runs inside that subprocess (standard library only).

Import from here: the split behind it may move.
"""

from __future__ import annotations

from fusechat3.scoring.code_extract import PYTHON_TAGS, code_blocks, extract_code, static_verdict, undefined_names
from fusechat3.scoring.sandbox import (
    FILE_SIZE_LIMIT,
    OPEN_FILES_LIMIT,
    PROCESS_LIMIT,
    VERDICTS,
    describe_isolation,
    network_isolated,
    run_batch,
    run_tests,
)
from fusechat3.scoring.sandbox_pool import pool_size, run_tests_many

__all__ = [
    "FILE_SIZE_LIMIT",
    "OPEN_FILES_LIMIT",
    "PROCESS_LIMIT",
    "PYTHON_TAGS",
    "VERDICTS",
    "code_blocks",
    "describe_isolation",
    "extract_code",
    "network_isolated",
    "pool_size",
    "run_batch",
    "run_tests",
    "run_tests_many",
    "static_verdict",
    "undefined_names",
]
