"""Code answers with several Python blocks: `extract_code` builds the program from the blocks that define what the
tests call, and the real sandbox (`run_tests`) judges it. Each case is a whole response, as a model writes it."""

from __future__ import annotations

import pytest

from fusechat3.scoring.code import extract_code, run_tests

TESTS = ["assert add_one(1) == 2", "assert add_one(-1) == 0"]
SOLUTION = "```python\ndef add_one(x):\n    return x + 1\n```\n"
WRONG = "```python\ndef add_one(x):\n    return x + 2\n```\n"


def verdict(response: str, tests: list[str] = TESTS) -> tuple[bool, str]:
    code = extract_code(response)
    assert code is not None
    return run_tests(code, tests, timeout_s=10.0)


# (1) The solution, then an example-usage block with a `main()` that calls it.
USAGE_MAIN = (
    "Here is the solution:\n\n" + SOLUTION + "\nExample usage:\n\n"
    "```python\ndef main():\n    print(add_one(1))\n    print(add_one(41))\n\nmain()\n```\n"
    "This prints `2` and `42`.\n"
)
# (2) A helper in its own block, then the solution that uses it.
HELPER_FIRST = (
    "First a helper:\n\n```python\ndef increment(x, step=1):\n    return x + step\n```\n\n"
    "Then the function itself:\n\n```python\ndef add_one(x):\n    return increment(x)\n```\n"
)
# (3) The solution and its own checks: in the same block, in a block of pytest-style test functions, in a loop.
OWN_ASSERTS_SAME_BLOCK = (
    "```python\ndef add_one(x):\n    return x + 1\n\nassert add_one(1) == 2\nassert add_one(0) == 1\n```\n"
)
OWN_TEST_FUNCTION = (
    SOLUTION + "\nTests:\n\n```python\ndef test_add_one():\n    assert add_one(1) == 2\n    assert add_one(0) == 1\n\n"
    "test_add_one()\n```\n"
)
OWN_ASSERT_LOOP = SOLUTION + "\n```python\nfor x, y in [(1, 2), (5, 6)]:\n    assert add_one(x) == y\n```\n"
# The model's own check is wrong (add_one(1) is 2, not 3), its solution right: the prompt's tests decide.
OWN_WRONG_ASSERT = "```python\ndef add_one(x):\n    return x + 1\n\nassert add_one(1) == 3\n```\n"
OWN_WRONG_ASSERT_LOOP = (
    "```python\ndef add_one(x):\n    return x + 1\n\nfor x, y in [(1, 3)]:\n    assert add_one(x) == y, 'no'\n```\n"
)
# Its own pytest-style test, wrong, called at the top level; `unittest.main()` unguarded (it would exit).
OWN_WRONG_TEST_CALLED = (
    SOLUTION + "\n```python\ndef test_add_one():\n    assert add_one(1) == 3\n\ntest_add_one()\n```\n"
)
UNITTEST_MAIN = (
    SOLUTION + "\n```python\nimport unittest\n\nclass TestAddOne(unittest.TestCase):\n    def test_one(self):\n"
    "        self.assertEqual(add_one(1), 2)\n\nunittest.main()\n```\n"
)
# (4) A `__main__` demo that prints, and one that reads input (forever): neither runs, as the program is a module.
MAIN_GUARD_PRINT = SOLUTION + "\nTo try it:\n\n```python\nif __name__ == '__main__':\n    print(add_one(3))\n```\n"
MAIN_GUARD_INPUT = (
    SOLUTION + "\nA small command-line demo:\n\n```python\nimport sys\n\ndef main():\n    while True:\n"
    "        n = int(input('number: '))\n        print(add_one(n))\n\nif __name__ == \"__main__\":\n    main()\n```\n"
)
# A usage block that reads input at the top level, or imports the solution from a module of its own: not the program.
USAGE_INPUT = SOLUTION + "\n```python\nfrom solution_module import add_one\nn = int(input())\nprint(add_one(n))\n```\n"
# (5) Blocks in other languages (first, and between the Python blocks) are not Python.
OTHER_LANGUAGES = (
    "In JavaScript:\n\n```javascript\nfunction add_one(x) { return x - 1; }\n```\n\nIn Python, with a helper:\n\n"
    "```python\ndef increment(x):\n    return x + 1\n```\n\n```bash\npython add.py\n```\n\n"
    "```python\ndef add_one(x):\n    return increment(x)\n\nprint(add_one(1))\n```\n\nOutput:\n\n```text\n2\n```\n"
)
# (6) Two definitions of add_one: the later one wins, as in Python; the first block also holds a helper.
WRONG_THEN_RIGHT = (
    "```python\ndef increment(x):\n    return x + 1\n\ndef add_one(x):\n    return increment(x) + 1\n```\n\n"
    "Oops, that adds two. Fixed:\n\n```python\ndef add_one(x):\n    return increment(x)\n```\n"
)
RIGHT_THEN_WRONG = (
    "```python\ndef increment(x):\n    return x + 1\n\ndef add_one(x):\n    return increment(x)\n```\n\n"
    "A variant:\n\n```python\ndef add_one(x):\n    return increment(x) + 1\n```\n"
)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        pytest.param(USAGE_MAIN, (True, "passed"), id="1-usage-block-with-main"),
        pytest.param(USAGE_MAIN.replace("x + 1", "x + 2"), (False, "test_failed"), id="1-usage-block-wrong-solution"),
        pytest.param(HELPER_FIRST, (True, "passed"), id="2-helper-block-first"),
        pytest.param(HELPER_FIRST.replace("step=1", "step=2"), (False, "test_failed"), id="2-helper-wrong"),
        pytest.param(OWN_ASSERTS_SAME_BLOCK, (True, "passed"), id="3-own-asserts-same-block"),
        pytest.param(OWN_TEST_FUNCTION, (True, "passed"), id="3-own-test-function-block"),
        pytest.param(OWN_ASSERT_LOOP, (True, "passed"), id="3-own-assert-loop"),
        pytest.param(OWN_WRONG_ASSERT, (True, "passed"), id="3-own-wrong-assert-ignored"),
        pytest.param(OWN_WRONG_ASSERT_LOOP, (True, "passed"), id="3-own-wrong-assert-loop-ignored"),
        pytest.param(
            OWN_TEST_FUNCTION.replace("x + 1", "x + 2"), (False, "test_failed"), id="3-own-tests-wrong-solution"
        ),
        pytest.param(OWN_WRONG_TEST_CALLED, (True, "passed"), id="3-own-wrong-test-function-called-ignored"),
        pytest.param(UNITTEST_MAIN, (True, "passed"), id="3-unittest-main-unguarded"),
        pytest.param(MAIN_GUARD_PRINT, (True, "passed"), id="4-main-guard-print"),
        pytest.param(MAIN_GUARD_INPUT, (True, "passed"), id="4-main-guard-input"),
        pytest.param(USAGE_INPUT, (True, "passed"), id="4-usage-block-reads-input"),
        pytest.param(OTHER_LANGUAGES, (True, "passed"), id="5-other-languages"),
        pytest.param(WRONG_THEN_RIGHT, (True, "passed"), id="6-wrong-then-right"),
        pytest.param(RIGHT_THEN_WRONG, (False, "test_failed"), id="6-right-then-wrong"),
        pytest.param(SOLUTION + "\n" + WRONG, (False, "test_failed"), id="6-whole-blocks-right-then-wrong"),
        pytest.param(WRONG + "\n" + SOLUTION, (True, "passed"), id="6-whole-blocks-wrong-then-right"),
    ],
)
def test_several_blocks_judged_as_one_program(response: str, expected: tuple[bool, str]) -> None:
    assert verdict(response) == expected


def test_the_program_is_the_defining_blocks_in_order() -> None:
    # Other languages, usage blocks and the model's own top-level asserts are left out; the rest is kept verbatim.
    code = extract_code(OTHER_LANGUAGES)
    assert (
        code == "def increment(x):\n    return x + 1\n\ndef add_one(x):\n    return increment(x)\n\nprint(add_one(1))\n"
    )
    assert extract_code(OWN_WRONG_ASSERT) == "def add_one(x):\n    return x + 1\n\n"
    assert extract_code(USAGE_INPUT) == "def add_one(x):\n    return x + 1\n"
    # A block all of whose names a later block redefines is an earlier draft: left out.
    assert extract_code(WRONG + SOLUTION) == "def add_one(x):\n    return x + 1\n"


def test_future_imports_move_to_the_top() -> None:
    response = (
        "```python\nfrom __future__ import annotations\n\ndef increment(x: int) -> int:\n    return x + 1\n```\n"
        "```python\nfrom __future__ import annotations\n\ndef add_one(x: int) -> int:\n    return increment(x)\n```\n"
    )
    code = extract_code(response)
    assert code is not None and code.startswith("from __future__ import annotations\n")
    assert code.count("__future__") == 1
    assert verdict(response) == (True, "passed")


def test_a_broken_solution_block_is_a_syntax_error_not_skipped() -> None:
    # A block that does not parse but defines something is part of the program: the answer is broken.
    broken = "```python\ndef add_one(x)\n    return x + 1\n```\n"
    assert verdict(SOLUTION + broken) == (False, "syntax_error")
    # A doctest-like transcript that does not parse and defines nothing is not code of the program.
    assert verdict(SOLUTION + "```python\n>>> add_one(1)\n2\n```\n") == (True, "passed")


def test_a_self_check_that_mixes_definitions_is_kept() -> None:
    # A top-level loop that fills a table the solution reads is part of the program, though it asserts too.
    response = (
        "```python\nTABLE = {}\nfor k in range(5):\n    TABLE[k] = k + 1\n    assert TABLE[k] > k\n\n"
        "def add_one(x):\n    return TABLE[x] if x in TABLE else x + 1\n```\n"
    )
    assert "TABLE[k] = k + 1" in (extract_code(response) or "")
    assert verdict(response) == (True, "passed")
