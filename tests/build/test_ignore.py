""".dockerignore matching: a table of cases from Docker's documented behaviour (our own cases), the
directory-skipping rule of Docker's context walker, and properties checked with hypothesis."""

from __future__ import annotations

import fnmatch
import posixpath

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from skiff.build.ignore import IgnoreMatcher, clean, read_patterns
from skiff.errors import InvalidArgument

# (the .dockerignore text, a path, whether the path is excluded)
CASES = [
    # plain names match at the root only, and everything below a matched directory
    ("secret.txt", "secret.txt", True),
    ("secret.txt", "sub/secret.txt", False),
    ("build", "build/out/app.bin", True),
    ("build", "builder", False),
    ("/build", "build/x", True),
    ("./build/", "build/x", True),
    ("a//b/../c", "a/c/file", True),
    ("a/b", "a", False),
    # * stays inside one component
    ("*.md", "README.md", True),
    ("*.md", "docs/README.md", False),
    ("*/temp*", "somedir/temporary.txt", True),
    ("*/temp*", "somedir/temp", True),
    ("*/temp*", "temp", False),
    ("*/*/temp*", "somedir/subdir/temporary.txt", True),
    ("*/*/temp*", "somedir/temporary.txt", False),
    ("*", "anything", True),
    ("*", "dir/deep/file", True),
    # ? is one character other than /
    ("temp?", "tempa", True),
    ("temp?", "temp", False),
    ("temp?", "tempab", False),
    ("a?b", "a/b", False),
    # ** is any number of directories, none included
    ("**/*.go", "main.go", True),
    ("**/*.go", "cmd/tool/main.go", True),
    ("**/*.go", "main.golang", False),
    ("**/node_modules", "node_modules/x", True),
    ("**/node_modules", "web/app/node_modules/react/index.js", True),
    ("docs/**", "docs/a/b.md", True),
    ("docs/**", "docs", False),
    ("docs/**/*.png", "docs/img.png", True),
    ("docs/**/*.png", "docs/a/b/img.png", True),
    ("docs/**/*.png", "other/img.png", False),
    ("**", "anything/at/all", True),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b/c", True),
    # character classes and escapes
    ("file[0-9].txt", "file7.txt", True),
    ("file[0-9].txt", "filex.txt", False),
    ("file[^0-9].txt", "filex.txt", True),
    ("file[^0-9].txt", "file1.txt", False),
    ("[ab]*", "apple", True),
    ("[ab]*", "cherry", False),
    ("[*?]x", "*x", True),
    ("[*?]x", "ax", False),
    ("a[[]b", "a[b", True),
    ("[a-c][!]", "b!", True),
    ("x]", "x]", True),
    ("\\*literal", "*literal", True),
    ("\\*literal", "xliteral", False),
    ("what\\?", "what?", True),
    ("what\\?", "whatx", False),
    # regex characters are plain characters
    ("a+b(c).txt", "a+b(c).txt", True),
    ("v1.0", "v1x0", False),
    ("{x}$", "{x}$", True),
    # comments and blanks
    ("# *.txt", "notes.txt", False),
    ("  # not a comment because of the blanks", "# not a comment because of the blanks", True),
    ("\n\n   \n", "x", False),
    ("  padded.txt  ", "padded.txt", True),
    # exceptions: the last matching pattern wins
    ("*.md\n!README.md", "README.md", False),
    ("*.md\n!README.md", "CHANGES.md", True),
    ("*.md\n!README*.md\nREADME-secret.md", "README-secret.md", True),
    ("*.md\n!README*.md\nREADME-secret.md", "README-public.md", False),
    ("!README.md\n*.md", "README.md", True),
    ("*\n!src\n", "src/deep/file.py", False),
    ("*\n!src\n", "Makefile", True),
    ("logs\n!logs/keep.log", "logs/keep.log", False),
    ("logs\n!logs/keep.log", "logs/other.log", True),
    ("! spaced", "spaced", False),
    ("spaced\n!  /spaced/", "spaced/x", False),
    ("**/*.log\n!**/important.log", "a/b/important.log", False),
    ("**/*.log\n!**/important.log", "a/b/noise.log", True),
    # the context root is never excluded
    ("*", ".", False),
    ("**", "", False),
]


@pytest.mark.parametrize(("ignore", "path", "excluded"), CASES)
def test_documented_cases(ignore, path, excluded):
    assert IgnoreMatcher(ignore).excluded(path) is excluded


def test_read_patterns_normalises_like_docker():
    text = "\ufeff# comment\n/abs\n./rel/\n!/neg/../negated\n  trimmed  \n\n! spaced\n"
    assert read_patterns(text) == ["abs", "rel", "!negated", "trimmed", "!spaced"]


def test_a_lone_bang_is_an_error():
    with pytest.raises(InvalidArgument, match='illegal exclusion pattern: "!"'):
        IgnoreMatcher("!\n")


@pytest.mark.parametrize("pattern", ["file[", "[]", "a[b-]", "[^]", "trailing\\"])
def test_bad_patterns_are_errors(pattern):
    with pytest.raises(InvalidArgument, match="syntax error in pattern"):
        IgnoreMatcher(pattern)


def test_empty_matcher_excludes_nothing():
    matcher = IgnoreMatcher("")
    assert not matcher
    assert not matcher.excluded("anything")


# -- the walker's directory rule ----------------------------------------------------------------------------


def test_excluded_directory_is_skipped_without_exceptions():
    matcher = IgnoreMatcher("node_modules\n")
    assert matcher.skip_dir("node_modules")
    assert not matcher.skip_dir("src")


def test_an_exception_inside_the_directory_keeps_the_walk_going():
    matcher = IgnoreMatcher("vendor\n!vendor/keep/me.txt\n")
    assert not matcher.skip_dir("vendor")
    assert not matcher.skip_dir("vendor/keep")
    assert matcher.skip_dir("vendor/other")
    assert not matcher.excluded("vendor/keep/me.txt")
    assert matcher.excluded("vendor/keep/other.txt")


def test_a_wildcard_exception_cannot_reach_into_a_skipped_directory():
    # Docker's client only walks into an excluded directory for exceptions that spell out a path in it.
    matcher = IgnoreMatcher("cache\n!**/keep\n")
    assert matcher.skip_dir("cache")
    assert not matcher.excluded("cache/keep")


def test_exception_on_a_sibling_with_a_common_prefix_does_not_count():
    matcher = IgnoreMatcher("data\n!database/x\n")
    assert matcher.skip_dir("data")


# -- Dockerfile and .dockerignore ---------------------------------------------------------------------------


def test_keeping_adds_exceptions_for_excluded_build_files():
    matcher = IgnoreMatcher("*\n!app\n").keeping("Dockerfile", ".dockerignore")
    assert matcher.patterns == ["*", "!app", "!Dockerfile", "!.dockerignore"]
    assert not matcher.excluded("Dockerfile") and not matcher.excluded(".dockerignore")
    assert matcher.excluded("other")


def test_keeping_changes_nothing_when_the_files_are_not_excluded():
    matcher = IgnoreMatcher("*.tmp\n")
    assert matcher.keeping("Dockerfile", ".dockerignore") is matcher


def test_keeping_escapes_glob_characters_in_names():
    matcher = IgnoreMatcher("*\n").keeping("Dockerfile[dev]")
    assert not matcher.excluded("Dockerfile[dev]")
    assert matcher.excluded("Dockerfiled")


def test_keeping_a_dockerfile_in_a_subdirectory():
    matcher = IgnoreMatcher("docker\n").keeping("docker/Dockerfile.prod")
    assert not matcher.excluded("docker/Dockerfile.prod")
    assert matcher.excluded("docker/other")
    assert not matcher.skip_dir("docker")


# -- properties ---------------------------------------------------------------------------------------------

_NAME = st.text(alphabet="abc.-_", min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
_PATH = st.lists(_NAME, min_size=1, max_size=4).map("/".join)
_GLOB_PART = st.text(alphabet="abc*?", min_size=1, max_size=4)


@given(_PATH, st.lists(_NAME, max_size=3))
def test_a_literal_path_excludes_itself_and_everything_below(path, below):
    matcher = IgnoreMatcher(path)
    assert matcher.excluded(path)
    assert matcher.excluded("/".join([path, *below]))
    assert matcher.skip_dir(path)


@given(_PATH)
def test_an_exception_for_the_same_pattern_undoes_it(path):
    assert not IgnoreMatcher(f"{path}\n!{path}").excluded(path)


@given(_PATH)
def test_double_star_slash_name_matches_at_any_depth(path):
    name = path.rsplit("/", 1)[-1]
    assert IgnoreMatcher(f"**/{name}").excluded(path)


@given(st.lists(_GLOB_PART, min_size=1, max_size=3), st.lists(_NAME, min_size=1, max_size=3))
def test_single_star_and_question_mark_match_component_by_component(glob, parts):
    # Without ** a pattern matches a path of as many components when each component matches
    # (fnmatch agrees inside one component); a shorter pattern may match a parent directory instead.
    matcher = IgnoreMatcher("/".join(glob))
    assume(not any("**" in g for g in glob))
    path = "/".join(parts)
    expected = any(len(glob) == n and all(fnmatch.fnmatchcase(p, g) for p, g in zip(parts[:n], glob, strict=True))
                   for n in range(1, len(parts) + 1))
    assert matcher.excluded(path) is expected


@given(st.lists(_PATH, max_size=4), _PATH, _NAME)
def test_without_exceptions_an_excluded_directory_excludes_its_children(patterns, path, child):
    matcher = IgnoreMatcher("\n".join(patterns))
    if matcher.excluded(path):
        assert matcher.excluded(f"{path}/{child}")
        assert matcher.skip_dir(path)


@given(st.text(alphabet="ab./", max_size=12))
def test_clean_matches_go_filepath_clean(path):
    cleaned = clean(path)
    assert clean(cleaned) == cleaned
    assert "//" not in cleaned
    assert cleaned == "." or not cleaned.endswith("/") or cleaned == "/"
    if path and not path.startswith("//"):
        assert cleaned == posixpath.normpath(path)
