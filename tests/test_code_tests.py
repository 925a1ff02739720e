"""Tests for data_builders._code_tests: assert extraction from self-oss-instruct responses and LeetCode
examples checked against the reference solution, on fixtures in the real datasets' layouts (the sandbox is real)."""

from __future__ import annotations

import pytest

from data_builders._code_tests import asserts_from_response, examples, leetcode_tests, leetcode_tests_many
from fusechat3.scoring.code import extract_code, run_tests, run_tests_many

# ---------------------------------------------------------------------------------------------------------------
# self-oss-instruct-sc2: the `response` column (solution, explanation, then the [Tests] part)

OSS_RESPONSE = """Implementing the required Python class with the method `find_nth_prime_memoized(n)` involves several key steps:

1. The class should have a constructor `__init__` that initializes the cache list with the first two primes.
2. The method `find_nth_prime_memoized` checks the cache first, then finds and caches new primes.

Here is how you could implement such a class:

```python
class PrimeFinder:
    def __init__(self):
        self.primes = [2, 3]

    def is_prime(self, num: int) -> bool:
        assert num >= 0, "negative numbers are not handled"
        if num < 2:
            return False
        for prime in self.primes:
            if prime * prime > num:
                break
            if num % prime == 0:
                return False
        return True

    def find_nth_prime_memoized(self, n: int) -> int:
        if n <= len(self.primes):
            return self.primes[n - 1]
        current_num = self.primes[-1] + 2
        while len(self.primes) < n:
            if self.is_prime(current_num):
                self.primes.append(current_num)
            current_num += 2
        return self.primes[n - 1]
```

[Tests]
Here's how you can test this class by verifying that the class correctly finds the first few primes and that \
subsequent calls return the memoized results directly:

```python
import math

first_few_primes = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
prime_finder = PrimeFinder()
for i, prime in enumerate(first_few_primes, 1):
    assert prime_finder.find_nth_prime_memoized(i) == prime

assert prime_finder.find_nth_prime_memoized(
    11
) == 31
assert math.isqrt(prime_finder.find_nth_prime_memoized(4)) == 2
```
"""


def test_asserts_from_a_self_oss_instruct_response() -> None:
    tests = asserts_from_response(OSS_RESPONSE)
    assert tests == [
        "import math\n"
        "first_few_primes = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]\n"
        "prime_finder = PrimeFinder()\n"
        "for i, prime in enumerate(first_few_primes, 1):\n"
        "    assert prime_finder.find_nth_prime_memoized(i) == prime",
        "assert prime_finder.find_nth_prime_memoized(\n    11\n) == 31",
        "assert math.isqrt(prime_finder.find_nth_prime_memoized(4)) == 2",
    ]
    # The response's own solution passes them in the sandbox; a wrong one does not.
    code = extract_code(OSS_RESPONSE)
    assert code is not None and code.startswith("class PrimeFinder")  # not the later block of asserts
    wrong = code.replace("current_num += 2", "current_num += 4")
    assert run_tests_many([(code, tests), (wrong, tests)], timeout_s=5.0) == [(True, "passed"), (False, "test_failed")]


def test_asserts_inline_main_guard_and_not_inside_functions() -> None:
    response = (
        "Solution and checks in one block:\n\n"
        "```python\n"
        "import re\n"
        "LIMIT = 3\n\n"
        "def count_words(text):\n"
        "    assert isinstance(text, str)\n"
        "    return len(re.findall(r'\\w+', text))\n\n"
        "def test_count_words():\n"
        "    assert count_words('a b') == 2\n\n"
        "assert count_words('hello world') == 2\n"
        "if __name__ == '__main__':\n"
        "    assert count_words('') == 0\n"
        "    assert count_words('x,y;z') == LIMIT\n"
        "    print('ok')\n"
        "```\n"
    )
    # Top-level asserts only (not those in count_words or the pytest-style function), the main guard opened;
    # `import re` and `LIMIT = 3` belong to the solution in this block and are not repeated as setup.
    assert asserts_from_response(response) == [
        "assert count_words('hello world') == 2",
        "assert count_words('') == 0",
        "assert count_words('x,y;z') == LIMIT",
    ]


def test_asserts_from_response_without_tests() -> None:
    assert asserts_from_response("```python\ndef f():\n    return 1\n```\nNo tests here.") == []
    assert asserts_from_response("Just prose, assert nothing.") == []
    assert asserts_from_response("```python\nassert f(1) ==\n```") == []  # does not parse
    assert asserts_from_response("```js\nconsole.assert(f(1) === 1)\n```") == []
    assert asserts_from_response(None) == []  # type: ignore[arg-type]
    # No fences: the whole text, when it is Python.
    assert asserts_from_response("def f(x):\n    return x\n\nassert f(2) == 2\n") == ["assert f(2) == 2"]


# ---------------------------------------------------------------------------------------------------------------
# LeetCode: greengerong/leetcode rows (`content` markdown with escaped brackets and its `"abc "` string artifact;
# `python` a fenced solution followed by an explanation)

TWO_SUM = r"""Given an array of integers `nums` and an integer `target`, return _indices of the two numbers such that they add up to `target`_.

You may assume that each input would have **_exactly_ one solution**, and you may not use the _same_ element twice.

You can return the answer in any order.

**Example 1:**

**Input:** nums = \[2,7,11,15\], target = 9
**Output:** \[0,1\]
**Explanation:** Because nums\[0\] + nums\[1\] == 9, we return \[0, 1\].

**Example 2:**

**Input:** nums = \[3,2,4\], target = 6
**Output:** \[1,2\]

**Example 3:**

**Input:** nums = \[3,3\], target = 6
**Output:** \[0,1\]

**Constraints:**

*   `2 <= nums.length <= 104`
*   `-109 <= nums[i] <= 109`
*   **Only one valid answer exists.**

**Follow-up:** Can you come up with an algorithm that is less than `O(n2)` time complexity?"""

TWO_SUM_PY = """```python
def twoSum(nums, target):
    map = {}
    for i, num in enumerate(nums):
        complement = target - num
        if complement in map:
            return [map[complement], i]
        map[num] = i
    return []
```
explanation
The algorithm leverages a hash map. It iterates through the given 'nums' array and calculates the complementary \
value (target - current value). If the complementary value is already in the hash map, we return those indices."""

PALINDROME = r"""Given a string `s`, return _the longest_ _palindromic_ _substring_ in `s`.

**Example 1:**

**Input:** s =  "babad "
**Output:**  "bab "
**Explanation:**  "aba " is also a valid answer.

**Example 2:**

**Input:** s =  "cbbd "
**Output:**  "bb "

**Constraints:**

*   `1 <= s.length <= 1000`
*   `s` consist of only digits and English letters."""

PALINDROME_PY = """```python
def longest_palindromic_substring(s: str) -> str:
    n = len(s)
    if n == 0: return ""

    start, max_length = 0, 1

    for i in range(n):
        l, r = i, i

        while r < n - 1 and s[r] == s[r + 1]:
            r += 1
        i = r

        while l > 0 and r < n - 1 and s[l - 1] == s[r + 1]:
            l -= 1
            r += 1

        length = r - l + 1
        if length > max_length:
            start, max_length = l, length

    return s[start:start + max_length]
```
explanation
1. Initialize `start` and `maxLength` for result substring.
2. Iterate through the given string `s` using the index `i`."""

# LeetCode's own HTML layout, a `class Solution` reference with a helper method, JSON `true`/`false`, and one
# example whose output is wrong (it must not become a test).
PALINDROME_NUMBER_HTML = """<p>Given an integer <code>x</code>, return <code>true</code><em> if </em><code>x</code><em> is a \
</em><em><strong>palindrome</strong></em><em>, and </em><code>false</code><em> otherwise</em>.</p>
<p><strong class="example">Example 1:</strong></p>
<pre>
<strong>Input:</strong> x = 121
<strong>Output:</strong> true
<strong>Explanation:</strong> 121 reads as 121 from left to right and from right to left.
</pre>
<p><strong class="example">Example 2:</strong></p>
<pre>
<strong>Input:</strong> x = -121
<strong>Output:</strong> false
</pre>
<p><strong class="example">Example 3:</strong></p>
<pre>
<strong>Input:</strong> x = 10
<strong>Output:</strong> true
</pre>
<p><strong>Constraints:</strong></p>
<ul><li><code>-2<sup>31</sup>&nbsp;&lt;= x &lt;= 2<sup>31</sup>&nbsp;- 1</code></li></ul>"""

PALINDROME_NUMBER_PY = """```python
class Solution:
    def _digits(self, x):
        return str(x)

    def isPalindrome(self, x: int) -> bool:
        s = self._digits(x)
        return s == s[::-1]
```"""

MEDIAN = r"""Given two sorted arrays `nums1` and `nums2` of size `m` and `n` respectively, return **the median** of the two sorted arrays.

**Example 1:**

**Input:** nums1 = \[1,3\], nums2 = \[2\]
**Output:** 2.00000
**Explanation:** merged array = \[1,2,3\] and median is 2.

**Example 2:**

**Input:** nums1 = \[1,2\], nums2 = \[3,4\]
**Output:** 2.50000
**Explanation:** merged array = \[1,2,3,4\] and median is (2 + 3) / 2 = 2.5."""

MEDIAN_PY = """```python
def findMedianSortedArrays(nums1, nums2):
    merged = sorted(nums1 + nums2)
    n = len(merged)
    return (merged[n // 2] + merged[(n - 1) // 2]) / 2
```"""

# Linked lists: the examples show lists, the reference takes ListNode: the reference check drops them.
ADD_TWO_NUMBERS = r"""You are given two **non-empty** linked lists representing two non-negative integers.

**Example 1:**

**Input:** l1 = \[2,4,3\], l2 = \[5,6,4\]
**Output:** \[7,0,8\]
**Explanation:** 342 + 465 = 807.
"""

ADD_TWO_NUMBERS_PY = """```python
class ListNode:
    def __init__(self, val=0, next=None):
        self.val = val
        self.next = next

def addTwoNumbers(l1, l2):
    dummy = ListNode(0)
    current = dummy
    carry = 0
    while l1 or l2 or carry:
        sum_val = (l1.val if l1 else 0) + (l2.val if l2 else 0) + carry
        carry = sum_val // 10
        current.next = ListNode(sum_val % 10)
        current = current.next
        if l1: l1 = l1.next
        if l2: l2 = l2.next
    return dummy.next
```"""

# A design problem: no `name = value` input.
MIN_STACK = r"""Design a stack that supports push, pop, top, and retrieving the minimum element in constant time.

**Example 1:**

**Input**
\[ "MinStack ", "push ", "push ", "push ", "getMin ", "pop ", "top ", "getMin "\]
\[\[\],\[-2\],\[0\],\[-3\],\[\],\[\],\[\],\[\]\]

**Output**
\[null,null,null,null,-3,null,0,-2\]
"""

MIN_STACK_PY = """```python
class MinStack:
    def __init__(self):
        self.stack = []
        self.min_stack = []

    def push(self, val: int):
        self.stack.append(val)
        if not self.min_stack or val <= self.min_stack[-1]:
            self.min_stack.append(val)

    def getMin(self) -> int:
        return self.min_stack[-1]
```"""


def test_examples_markdown_and_html() -> None:
    assert examples(TWO_SUM) == [
        ("nums = [2,7,11,15], target = 9", "[0,1]"),
        ("nums = [3,2,4], target = 6", "[1,2]"),
        ("nums = [3,3], target = 6", "[0,1]"),
    ]
    assert examples(PALINDROME_NUMBER_HTML) == [("x = 121", "true"), ("x = -121", "false"), ("x = 10", "true")]
    assert examples("No examples in this one: `1 <= n` and `a > b`.") == []


@pytest.fixture(scope="module")
def built() -> list[tuple[list[str], dict[str, int]]]:
    # All problems in one call: the reference checks share one pool.
    return leetcode_tests_many(
        [
            (TWO_SUM, TWO_SUM_PY),
            (PALINDROME, PALINDROME_PY),
            (PALINDROME_NUMBER_HTML, PALINDROME_NUMBER_PY),
            (MEDIAN, MEDIAN_PY),
            (ADD_TWO_NUMBERS, ADD_TWO_NUMBERS_PY),
            (MIN_STACK, MIN_STACK_PY),
            ("Statement without examples.", TWO_SUM_PY),
            (TWO_SUM, "The reference is prose, not code."),
        ],
        timeout_s=5.0,
        workers=2,
    )


def test_leetcode_two_sum(built) -> None:
    assert built[0] == (
        [
            "assert twoSum([2, 7, 11, 15], 9) == [0, 1]",
            "assert twoSum([3, 2, 4], 6) == [1, 2]",
            "assert twoSum([3, 3], 6) == [0, 1]",
        ],
        {},
    )


def test_leetcode_string_artifact_is_repaired_only_where_the_reference_needs_it(built) -> None:
    # "babad " -> "bab" fails against "bab " as written; the variant without the artifact passes the reference.
    assert built[1] == (
        [
            "assert longest_palindromic_substring('babad') == 'bab'",
            "assert longest_palindromic_substring('cbbd') == 'bb'",
        ],
        {},
    )


def test_leetcode_html_solution_class_json_literals_and_a_wrong_example(built) -> None:
    # Example 3 says 10 is a palindrome: the reference disagrees, so it is dropped, not kept as a test.
    assert built[2] == (
        ["assert Solution().isPalindrome(121) == True", "assert Solution().isPalindrome(-121) == False"],
        {"reference_test_failed": 1},
    )


def test_leetcode_float_answers_compare_with_tolerance(built) -> None:
    assert built[3] == (
        [
            "assert abs(findMedianSortedArrays([1, 3], [2]) - 2.0) <= 1e-05",
            "assert abs(findMedianSortedArrays([1, 2], [3, 4]) - 2.5) <= 1e-05",
        ],
        {},
    )


def test_leetcode_unusable_examples_are_counted_by_reason(built) -> None:
    assert built[4] == ([], {"reference_runtime_error": 1})  # lists given where the reference wants ListNode
    assert built[5] == ([], {"unnamed_input": 1})
    assert built[6] == ([], {"no_examples": 1})
    assert built[7] == ([], {"no_reference": 3})


def test_leetcode_tests_judge_responses(built) -> None:
    """The built tests separate a right response (another algorithm, renamed parameters) from a wrong one."""
    tests = built[0][0]
    right = "def twoSum(numbers, goal):\n    for i in range(len(numbers)):\n        for j in range(i + 1, len(numbers)):\n            if numbers[i] + numbers[j] == goal:\n                return [i, j]\n"
    wrong = "def twoSum(nums, target):\n    return [0, 1]\n"
    assert run_tests_many([(right, tests), (wrong, tests)], timeout_s=5.0) == [(True, "passed"), (False, "test_failed")]


def test_leetcode_tests_single_problem() -> None:
    tests, dropped = leetcode_tests(TWO_SUM.split("**Example 2:**")[0], TWO_SUM_PY, timeout_s=5.0)
    assert (tests, dropped) == (["assert twoSum([2, 7, 11, 15], 9) == [0, 1]"], {})
    assert run_tests(extract_code(TWO_SUM_PY) or "", tests) == (True, "passed")
