"""The Dockerfile parser and variable substitution: every instruction's forms, directives, continuations,
heredocs, flags, errors naming their line, and which stages a target needs.

Expected values follow Docker's documented behaviour (the Dockerfile reference) and what its legacy
builder prints; the cases are our own.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiff.build.dockerfile import (
    Dockerfile,
    Instruction,
    expand,
    expand_heredoc,
    expand_words,
    meta_args,
    mount_options,
    onbuild_expression,
    parse,
    parse_instruction,
    run_script,
    stage_bases,
    stages_needed,
)
from skiff.errors import InvalidArgument


def only(text: str) -> Instruction:
    """The one instruction after ``FROM scratch``."""
    [instruction] = parse(f"FROM scratch\n{text}").stages[0].instructions
    return instruction


def parse_error(text: str) -> str:
    with pytest.raises(InvalidArgument) as info:
        parse(text)
    return str(info.value)


# -- structure ----------------------------------------------------------------------------------------------


def test_stages_global_args_and_lines():
    df = parse("ARG V=1\nARG BASE\n\nFROM busybox:${V} AS Builder\nRUN make\n\n# a comment\nFROM scratch\n"
               "COPY --from=builder /out /\n")
    assert [a.original for a in df.global_args] == ["ARG V=1", "ARG BASE"]
    assert [(s.index, s.name, s.base) for s in df.stages] == [(0, "builder", "busybox:${V}"), (1, None, "scratch")]
    assert [i.line for i in df.stages[0].instructions] == [5]
    assert df.stages[1].from_instruction.line == 8
    assert df.stages[1].instructions[0].line == 9
    assert df.stages[0].from_instruction.original == "FROM busybox:${V} AS Builder"


def test_keywords_are_case_insensitive_and_original_keeps_the_text():
    ins = only("  run   echo  hi  ")
    assert (ins.keyword, ins.args, ins.original) == ("RUN", ["echo  hi"], "run   echo  hi")


def test_from_platform_and_stage_name_lowercased():
    stage = parse("FROM --platform=linux/arm64 alpine as MyStage\n").stages[0]
    assert (stage.name, stage.platform, stage.base) == ("mystage", "linux/arm64", "alpine")


def test_bom_is_ignored():
    assert parse("\ufeffFROM scratch\n").stages[0].base == "scratch"


def test_crlf_line_endings():
    df = parse("FROM scratch\r\nRUN a \\\r\n  b\r\nCMD [\"x\"]\r\n")
    assert [i.args for i in df.stages[0].instructions] == [["a   b"], ["x"]]


# -- directives ---------------------------------------------------------------------------------------------


def test_directives_at_the_top():
    df = parse("# syntax=docker/dockerfile:1.7\n#check=skip=all\n# escape=`\nFROM scratch\n")
    assert df.directives == {"syntax": "docker/dockerfile:1.7", "check": "skip=all", "escape": "`"}
    assert df.escape == "`"


def test_directive_after_a_comment_or_blank_line_is_a_comment():
    assert parse("# hello\n# escape=`\nFROM scratch\n").directives == {}
    assert parse("\n# escape=`\nFROM scratch\n").directives == {}
    assert parse("FROM scratch\n# escape=`\n").directives == {}


def test_unknown_directive_ends_the_directives():
    assert parse("# foo=bar\n# escape=`\nFROM scratch\n").directives == {}


def test_repeated_directive_and_bad_escape_are_errors():
    assert "only one escape parser directive can be used" in parse_error("# escape=\\\n# escape=`\nFROM x\n")
    assert "invalid escape token '$' does not match ` or \\" in parse_error("# escape=$\nFROM x\n")


def test_backtick_escape_for_windows_paths():
    df = parse("# escape=`\nFROM scratch\nCOPY a.txt c:\\\nRUN dir c:\\ `\n  && echo done\n")
    copy, run = df.stages[0].instructions
    assert copy.args == ["a.txt", "c:\\"]
    assert run.args == ["dir c:\\   && echo done"]


# -- continuations ------------------------------------------------------------------------------------------


def test_continuation_joins_lines_keeping_the_blanks_before_the_escape():
    ins = only("RUN apt-get update && \\\n    apt-get install -y curl")
    assert ins.args == ["apt-get update &&     apt-get install -y curl"]
    assert ins.original == "RUN apt-get update &&     apt-get install -y curl"


def test_comments_and_blank_lines_inside_a_continuation_are_skipped():
    df = parse("FROM scratch\nRUN echo a \\\n# comment\n\n  && echo b\nCMD x\n")
    run, cmd = df.stages[0].instructions
    assert run.args == ["echo a   && echo b"]
    assert (run.line, cmd.line) == (2, 6)
    assert df.warnings == ["Empty continuation line found in: RUN echo a   && echo b"]


def test_trailing_blanks_after_the_escape_still_continue():
    assert only("RUN a \\  \t\n b").args == ["a  b"]


def test_escaped_escape_at_end_of_line_is_not_a_continuation():
    df = parse("FROM scratch\nRUN echo \\\\\nCMD x\n")
    assert [i.keyword for i in df.stages[0].instructions] == ["RUN", "CMD"]


def test_continuation_at_end_of_file():
    assert only("RUN echo hi \\").args == ["echo hi"]


def test_a_line_that_is_only_the_escape_joins_nothing():
    assert only("RUN a \\\n\\\n b").args == ["a  b"]


# -- per-instruction argument forms -------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "args", "json_form"), [
    ('RUN ["echo", "a b"]', ["echo", "a b"], True),
    ("RUN echo $HOME", ["echo $HOME"], False),
    ('RUN [ "sh" , "-c" ,"x" ]', ["sh", "-c", "x"], True),
    ('RUN ["unterminated"', ['["unterminated"'], False),
    ("RUN [not json]", ["[not json]"], False),
    ('CMD ["nginx", "-g", "daemon off;"]', ["nginx", "-g", "daemon off;"], True),
    ("CMD nginx -g 'daemon off;'", ["nginx -g 'daemon off;'"], False),
    ("CMD []", [], True),
    ('ENTRYPOINT ["/entry.sh"]', ["/entry.sh"], True),
    ("ENTRYPOINT exec top -b", ["exec top -b"], False),
    ('SHELL ["/bin/bash", "-o", "pipefail", "-c"]', ["/bin/bash", "-o", "pipefail", "-c"], True),
    ("COPY a b /dst/", ["a", "b", "/dst/"], False),
    ('COPY ["a b", "/dst dir/"]', ["a b", "/dst dir/"], True),
    ("ADD https://example.invalid/x.tar.gz /x", ["https://example.invalid/x.tar.gz", "/x"], False),
    ('VOLUME ["/data", "/logs"]', ["/data", "/logs"], True),
    ("VOLUME /data /logs", ["/data", "/logs"], False),
    ("EXPOSE 80/tcp  443 53/udp", ["80/tcp", "443", "53/udp"], False),
    ("USER app:app", ["app:app"], False),
    ("WORKDIR /srv/my app", ["/srv/my app"], False),
    ("STOPSIGNAL SIGTERM", ["SIGTERM"], False),
    ("MAINTAINER Jane Doe <jane@example.invalid>", ["Jane Doe <jane@example.invalid>"], False),
    ('HEALTHCHECK --interval=5s CMD ["curl", "-f", "http://localhost/"]', ["CMD", "curl", "-f", "http://localhost/"],
     True),
    ("HEALTHCHECK CMD curl -f http://localhost/ || exit 1", ["CMD", "curl -f http://localhost/ || exit 1"], False),
    ("HEALTHCHECK NONE", ["NONE"], False),
])
def test_argument_forms(line, args, json_form):
    ins = only(line)
    assert (ins.args, ins.json_form) == (args, json_form)


@pytest.mark.parametrize(("line", "pairs"), [
    ("ENV A=1", [("A", "1")]),
    ('ENV A=1 B="two words" C=three\\ words', [("A", "1"), ("B", '"two words"'), ("C", "three\\ words")]),
    ("ENV GREETING hello big   world", [("GREETING", "hello big   world")]),
    ("ENV EMPTY=", [("EMPTY", "")]),
    ("ENV A=x=y", [("A", "x=y")]),
    ('LABEL "com.example.vendor"="ACME Inc" version=1.0', [('"com.example.vendor"', '"ACME Inc"'), ("version", "1.0")]),
    ("LABEL description This text illustrates", [("description", "This text illustrates")]),
    ("ARG VERSION", [("VERSION", None)]),
    ("ARG A=1 B C=", [("A", "1"), ("B", None), ("C", "")]),
])
def test_key_value_instructions(line, pairs):
    ins = only(line)
    assert ins.pairs() == pairs
    assert ins.args == [k if v is None else f"{k}={v}" for k, v in pairs]


def test_key_values_expand_to_their_values():
    ins = only('ENV B="two words" C=three\\ words D=\'$NOT\'')
    assert [(expand(k, {}), expand(v, {})) for k, v in ins.pairs()] == [
        ("B", "two words"), ("C", "three words"), ("D", "$NOT")]


def test_onbuild_keeps_the_trigger_text_and_parses_it():
    ins = only("ONBUILD COPY --chown=1:1 . /app")
    assert ins.args == ["COPY --chown=1:1 . /app"]
    assert ins.trigger is not None
    assert (ins.trigger.keyword, ins.trigger.args, ins.trigger.flags) == ("COPY", [".", "/app"], {"chown": "1:1"})
    assert ins.trigger.original == "COPY --chown=1:1 . /app"


def test_parse_instruction_reads_a_stored_trigger():
    trigger = parse_instruction('RUN ["make", "install"]')
    assert (trigger.keyword, trigger.args, trigger.json_form) == ("RUN", ["make", "install"], True)
    with pytest.raises(InvalidArgument, match="unknown instruction: BOGUS"):
        parse_instruction("BOGUS x")


def test_maintainer_and_stopsignal_accept_their_text():
    assert only("STOPSIGNAL 9").args == ["9"]


# -- flags --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "flags"), [
    ("COPY --from=build --chown=app:app --chmod=0644 a /b", {"from": "build", "chown": "app:app", "chmod": "0644"}),
    ("COPY --link a /b", {"link": "true"}),
    ("COPY --link=false a /b", {"link": "false"}),
    ("COPY --parents --exclude=*.md . /b", {"parents": "true", "exclude": "*.md"}),
    ('COPY --chown="app user" a /b', {"chown": "app user"}),
    ("ADD --checksum=sha256:abc --keep-git-dir --unpack=false x /y", {"checksum": "sha256:abc",
                                                                      "keep-git-dir": "true", "unpack": "false"}),
    ("RUN --network=none --security=sandbox true", {"network": "none", "security": "sandbox"}),
    ("RUN --mount=type=cache,target=/root/.cache true", {"mount": "type=cache,target=/root/.cache"}),
    ("HEALTHCHECK --interval=30s --timeout=3s --start-period=1m --start-interval=2s --retries=3 CMD true",
     {"interval": "30s", "timeout": "3s", "start-period": "1m", "start-interval": "2s", "retries": "3"}),
])
def test_flags(line, flags):
    assert only(line).flags == flags


def test_repeatable_flags_keep_every_value():
    ins = only("RUN --mount=type=cache,target=/a --mount=type=tmpfs,target=/b true")
    assert ins.flag_values == {"mount": ["type=cache,target=/a", "type=tmpfs,target=/b"]}


def test_double_dash_ends_the_flags():
    ins = only("COPY -- --weird-name /dst")
    assert (ins.flags, ins.args) == ({}, ["--weird-name", "/dst"])


@pytest.mark.parametrize(("line", "message"), [
    ("COPY --form=x a b", "unknown flag: --form (did you mean from?)"),
    ("COPY --bogus=x a b", "unknown flag: --bogus"),
    ("RUN --chown=1 true", "unknown flag: --chown"),
    ("CMD --foo=bar x", "unknown flag: --foo"),
    ("WORKDIR --x /a", "unknown flag: --x"),
    ("COPY --from=a --from=b a b", "duplicate flag specified: --from"),
    ("COPY --from a b", "missing a value on flag: --from"),
    ("COPY --link= a b", "missing a value on flag: --link"),
    ("COPY --link=yes a b", "expecting boolean value for flag --link, not: yes"),
    ("RUN --network=bridge true", 'invalid network mode "bridge"'),
    ("RUN --security=root true", 'security "root" is not valid'),
    ("RUN --mount=type=volume,target=/x true", 'unsupported mount type "volume"'),
    ("HEALTHCHECK --interval=5 CMD true", "time: invalid duration"),
    ("HEALTHCHECK --timeout=10us CMD true", 'Interval "timeout" cannot be less than 1ms'),
    ("HEALTHCHECK --retries=-1 CMD true", "--retries cannot be negative (-1)"),
    ("HEALTHCHECK --retries=x CMD true", 'parsing "x": invalid syntax'),
])
def test_bad_flags_name_the_line(line, message):
    error = parse_error(f"FROM scratch\n\n{line}\n")
    assert error.startswith("dockerfile parse error on line 3: ")
    assert message in error


def test_flags_are_ignored_where_docker_ignores_them():
    assert only("STOPSIGNAL --x=1 SIGINT").args == ["SIGINT"]
    assert only("HEALTHCHECK --interval=nonsense NONE").args == ["NONE"]


def test_mount_options():
    assert mount_options("type=bind,from=build,source=/out,target=/in,ro") == {
        "type": "bind", "from": "build", "source": "/out", "target": "/in", "ro": "true"}
    assert mount_options('type=secret,id=tok,"target=/run/a,b"')["target"] == "/run/a,b"
    with pytest.raises(InvalidArgument, match="must be a key=value pair"):
        mount_options("type=bind,nonsense")


# -- errors name the line -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "line", "message"), [
    ("FROM scratch\nRUN true\nFOO bar\n", 3, "unknown instruction: FOO"),
    ("FROM scratch\ncopy a b\nrnu x\n", 3, "unknown instruction: rnu"),
    ("FROM scratch\nRUN a \\\n  b\nBLAH x\n", 4, "unknown instruction: BLAH"),
    ("RUN true\n", 1, "no build stage in current context"),
    ("ARG A\nENV B=1\nFROM scratch\n", 2, "no build stage in current context"),
    ("FROM\n", 1, "FROM requires either one or three arguments"),
    ("FROM a b\n", 1, "FROM requires either one or three arguments"),
    ("FROM a AS 1bad\n", 1, 'invalid name for build stage: "1bad", name can\'t start with a number or contain symbols'),
    ("FROM a AS x\nFROM b AS X\n", 2, "x stage name already used"),
    ("FROM scratch\nENV\n", 2, "ENV requires at least one argument"),
    ("FROM scratch\nENV ONLYKEY\n", 2, "ENV must have two arguments"),
    ("FROM scratch\nENV A=1 B\n", 2, 'Syntax error - can\'t find = in "B". Must be of the form: name=value'),
    ("FROM scratch\nENV =x\n", 2, "ENV names can not be blank"),
    ("FROM scratch\nLABEL\n", 2, "LABEL requires at least one argument"),
    ("FROM scratch\nARG\n", 2, "ARG requires at least one argument"),
    ("FROM scratch\nARG =x\n", 2, "ARG names can not be blank"),
    ("FROM scratch\nCOPY onlyone\n", 2, "COPY requires at least two arguments, but only one was provided"),
    ("FROM scratch\nADD onlyone\n", 2, "ADD requires at least two arguments"),
    ("FROM scratch\nCOPY a <<EOF\nx\nEOF\n", 2, "COPY cannot accept a heredoc as a destination"),
    ("FROM scratch\nWORKDIR\n", 2, "WORKDIR requires exactly one argument"),
    ("FROM scratch\nUSER\n", 2, "USER requires exactly one argument"),
    ("FROM scratch\nSTOPSIGNAL\n", 2, "STOPSIGNAL requires exactly one argument"),
    ("FROM scratch\nEXPOSE\n", 2, "EXPOSE requires at least one argument"),
    ("FROM scratch\nVOLUME\n", 2, "VOLUME requires at least one argument"),
    ('FROM scratch\nVOLUME ["/a", ""]\n', 2, "VOLUME specified can not be an empty string"),
    ("FROM scratch\nSHELL /bin/sh -c\n", 2, "SHELL requires the arguments to be in JSON form"),
    ("FROM scratch\nSHELL []\n", 2, "SHELL requires at least one argument"),
    ('FROM scratch\nCMD ["a", 1]\n', 2, "when using JSON array syntax, arrays must be comprised of strings only"),
    ("FROM scratch\nHEALTHCHECK\n", 2, "HEALTHCHECK requires at least one argument"),
    ("FROM scratch\nHEALTHCHECK NONE x\n", 2, "HEALTHCHECK NONE takes no arguments"),
    ("FROM scratch\nHEALTHCHECK RUN x\n", 2, 'Unknown type "RUN" in HEALTHCHECK (try CMD)'),
    ("FROM scratch\nHEALTHCHECK CMD\n", 2, "Missing command after HEALTHCHECK CMD"),
    ("FROM scratch\nONBUILD\n", 2, "ONBUILD requires at least one argument"),
    ("FROM scratch\nONBUILD ONBUILD RUN x\n", 2, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("FROM scratch\nONBUILD FROM x\n", 2, "FROM isn't allowed as an ONBUILD trigger"),
    ("FROM scratch\nONBUILD maintainer me\n", 2, "MAINTAINER isn't allowed as an ONBUILD trigger"),
    ("FROM scratch\nONBUILD FOO x\n", 2, "unknown instruction: FOO"),
    ("FROM scratch\nRUN <<EOF\necho never ends\n", 2, "unterminated heredoc"),
    ("# escape=x\nFROM scratch\n", 1, "invalid escape token"),
])
def test_errors_name_the_line(body, line, message):
    error = parse_error(body)
    assert error.startswith(f"dockerfile parse error on line {line}: "), error
    assert message in error


def test_unknown_instruction_suggests_the_near_one():
    assert parse_error("FROM scratch\nCOPPY a b\n").endswith("unknown instruction: COPPY (did you mean COPY?)")
    assert parse_error("FROM scratch\nXYZZY a\n").endswith("unknown instruction: XYZZY")


def test_files_without_instructions():
    assert parse_error("") == "the Dockerfile (Dockerfile) cannot be empty"
    assert parse_error("\n\n# only a comment\n") == "file with no instructions"
    assert parse_error("ARG A=1\n") == "No image was generated. Is your Dockerfile empty?"


# -- heredocs -----------------------------------------------------------------------------------------------


def test_run_heredoc_is_the_script():
    ins = only("RUN <<EOF\necho hello\necho $HOME\nEOF")
    [doc] = ins.heredocs
    assert (doc.name, doc.content, doc.expand, doc.chomp) == ("EOF", "echo hello\necho $HOME\n", True, False)
    assert ins.args == ["<<EOF"]
    assert run_script(ins) == ("echo hello\necho $HOME\n", None)


def test_heredoc_with_a_shebang_is_run_as_a_file():
    ins = only("RUN <<EOT\n#!/usr/bin/env python3\nprint('hi')\nEOT")
    script, doc = run_script(ins)
    assert script == "" and doc is not None and doc.content.startswith("#!/usr/bin/env python3\n")


def test_several_heredocs_on_one_line_are_read_in_order():
    df = parse("FROM scratch\nRUN cat <<A > /a && cat <<-B > /b\nfirst\nA\n\t\tsecond\n\tB\nCMD x\n")
    run, cmd = df.stages[0].instructions
    assert [(d.name, d.content, d.chomp) for d in run.heredocs] == [("A", "first\n", False), ("B", "second\n", True)]
    assert cmd.line == 7
    assert run_script(run) == ("cat <<A > /a && cat <<-B > /b\nfirst\nA\nsecond\nB", None)


@pytest.mark.parametrize(("marker", "name", "expand_content"), [
    ("<<EOF", "EOF", True),
    ('<<"EOF"', "EOF", False),
    ("<<'EOF'", "EOF", False),
    ("<<-'EOF'", "EOF", False),
    ("<< EOF", "EOF", True),
])
def test_quoted_delimiters_disable_expansion(marker, name, expand_content):
    ins = only(f"COPY {marker} /dest\n$X\n{name}")
    [doc] = ins.heredocs
    assert (doc.name, doc.expand, doc.content) == (name, expand_content, "$X\n")


def test_heredoc_with_words_after_it_goes_to_the_shell_whole():
    ins = only("RUN --mount=type=cache,target=/c <<PY python3\nprint('hi')\nPY")
    assert run_script(ins) == ("<<PY python3\nprint('hi')\nPY", None)


@pytest.mark.parametrize(("marker", "name", "expand_content", "fd"), [
    ("3<<DOC", "DOC", True, 3),
    ("<<eo'f'", "eof", False, 0),
    ("<<eo\\'f", "eo'f", True, 0),
    ("<<'two words'", "two words", False, 0),
    ("<<$VAR", "$VAR", True, 0),
])
def test_heredoc_delimiter_forms(marker, name, expand_content, fd):
    [doc] = only(f"RUN {marker}\nbody\n{name}").heredocs
    assert (doc.name, doc.expand, doc.fd, doc.content) == (name, expand_content, fd, "body\n")


def test_copy_heredoc_sources():
    ins = only("COPY <<one.txt <<two.txt /dir/\n1\none.txt\n2\ntwo.txt")
    assert [d.name for d in ins.heredocs] == ["one.txt", "two.txt"]
    assert ins.args == ["<<one.txt", "<<two.txt", "/dir/"]


def test_heredoc_terminator_must_be_alone_on_its_line():
    ins = only("RUN <<EOF\n  EOF\nEOF x\nEOF")
    assert ins.heredocs[0].content == "  EOF\nEOF x\n"


def test_no_heredocs_in_json_form_or_other_instructions():
    assert only('RUN ["sh", "-c", "cat <<EOF"]').heredocs == []
    # CMD takes no heredoc, so the would-be body is read as the next instruction
    assert parse_error("FROM scratch\nCMD cat <<EOF\nEOF x\n").startswith(
        "dockerfile parse error on line 3: unknown instruction: EOF")


def test_heredoc_marker_inside_quotes_is_not_a_heredoc():
    assert only("RUN echo '<<EOF'").heredocs == []


def test_onbuild_heredoc():
    ins = only("ONBUILD RUN <<EOF\necho built\nEOF")
    assert ins.trigger is not None
    assert [d.content for d in ins.heredocs] == ["echo built\n"]
    assert ins.trigger.heredocs == ins.heredocs


def test_onbuild_expression_round_trips_through_the_parser():
    ins = only("onbuild RUN <<EOF\necho built\nEOF")
    assert onbuild_expression(ins) == "RUN <<EOF\necho built\nEOF"
    again = parse(f"FROM scratch\n{onbuild_expression(ins)}\n").stages[0].instructions[0]
    assert (again.keyword, again.heredocs) == ("RUN", ins.heredocs)
    assert onbuild_expression(only("ONBUILD  COPY . /app")) == "COPY . /app"


def test_heredoc_expansion_treats_quotes_as_text():
    assert expand_heredoc('echo "$A" \'$A\' \\$A\n', {"A": "1"}) == "echo \"1\" '1' $A\n"


# -- expansion ----------------------------------------------------------------------------------------------

ENV = {"A": "a", "EMPTY": "", "SPACED": "x  y", "PATHV": "/usr/local/lib/lib.so.1", "N": "5"}


@pytest.mark.parametrize(("word", "expanded"), [
    ("$A", "a"),
    ("${A}", "a"),
    ("pre${A}post", "preapost"),
    ("$Apost", ""),
    ("$UNSET", ""),
    ("${UNSET}x", "x"),
    ("${UNSET:-default}", "default"),
    ("${EMPTY:-default}", "default"),
    ("${EMPTY-default}", ""),
    ("${UNSET-default}", "default"),
    ("${A:-default}", "a"),
    ("${A:+alt}", "alt"),
    ("${EMPTY:+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${UNSET+alt}", ""),
    ("${A:?must be set}", "a"),
    ("${EMPTY?ok if empty}", ""),
    ("${UNSET:-${A}}", "a"),
    ("${UNSET:-$A and ${A}}", "a and a"),
    ("${PATHV#*/}", "usr/local/lib/lib.so.1"),
    ("${PATHV##*/}", "lib.so.1"),
    ("${PATHV%.*}", "/usr/local/lib/lib.so"),
    ("${PATHV%%.*}", "/usr/local/lib/lib"),
    ("${PATHV/lib/LIB}", "/usr/local/LIB/lib.so.1"),
    ("${PATHV//lib/LIB}", "/usr/local/LIB/LIB.so.1"),
    ("'$A'", "$A"),
    ('"$A"', "a"),
    ('"${A} b"', "a b"),
    ('"\\$A"', "$A"),
    ('"a\\b"', "a\\b"),
    ('"say \\"hi\\""', 'say "hi"'),
    ("\\$A", "$A"),
    ("a\\ b", "a b"),
    ("$", "$"),
    ("a$", "a$"),
    ("$1", ""),
    ("${A}$", "a$"),
    ("trailing\\", "trailing"),
    ("a'b c'd", "ab cd"),
])
def test_expand(word, expanded):
    assert expand(word, ENV) == expanded


@pytest.mark.parametrize(("word", "message"), [
    ("${UNSET:?must be set}", "UNSET: must be set"),
    ("${UNSET?}", "UNSET: is not allowed to be unset"),
    ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
    ("${A", "syntax error: missing '}'"),
    ("${A:-x", "syntax error: missing '}'"),
    ("${}", "bad substitution"),
    ("${:x}", "bad substitution"),
    ("${A:=x}", "unsupported modifier (:=) in substitution"),
    ("${A!}", "unsupported modifier (!) in substitution"),
    ("'open", "matching single-quote"),
    ('"open', "matching double-quote"),
])
def test_expand_errors(word, message):
    with pytest.raises(InvalidArgument, match="failed to process") as info:
        expand(word, ENV)
    assert message in str(info.value)


def test_expand_keep_unset_leaves_unknown_references():
    assert expand("$A $UNSET ${UNSET} ${UNSET:-d}", ENV, keep_unset=True) == "a $UNSET ${UNSET} ${UNSET:-d}"


def test_expand_with_backtick_escape():
    assert expand("c:\\dir `$A", ENV, escape="`") == "c:\\dir $A"


def test_expand_words_splits_unquoted_expansions():
    assert expand_words("$SPACED", ENV) == ["x", "y"]
    assert expand_words('"$SPACED"', ENV) == ["x  y"]
    assert expand_words("80 ${N}43/udp", ENV) == ["80", "543/udp"]
    assert expand_words('a "" b', ENV) == ["a", "b"]


_PLAIN = st.text(alphabet=string.ascii_letters + string.digits + " ./-_:,=@", max_size=30)


@given(_PLAIN)
def test_text_without_specials_expands_to_itself(text):
    assert expand(text, ENV) == text
    assert expand_words(text, ENV) == text.split()


@given(st.text(max_size=30).filter(lambda s: "'" not in s))
def test_single_quotes_keep_everything(text):
    assert expand(f"'{text}'", ENV) == text


@given(st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=10),
       st.text(alphabet=string.ascii_letters + string.digits + " /.", max_size=20))
def test_a_set_variable_expands_to_its_value(name, value):
    env = {name: value}
    assert expand(f"${{{name}}}", env) == value
    assert expand(f'"${name}"', env) == value
    assert expand(f"${{{name}:-other}}", env) == (value or "other")


# -- stages -------------------------------------------------------------------------------------------------

MULTI = """\
ARG GO=1.22
FROM golang:${GO} AS base
RUN echo base
FROM base AS build
RUN make
FROM busybox AS tools
RUN echo tools
FROM busybox AS unrelated
RUN echo unrelated
FROM scratch AS final
COPY --from=build /out /app
RUN --mount=type=bind,from=tools,source=/bin,target=/t true
COPY --from=0 /etc/x /x
"""


def test_stages_needed_follows_from_copy_and_mounts():
    df = parse(MULTI)
    assert [s.name for s in stages_needed(df, None)] == ["base", "build", "tools", "final"]
    assert [s.name for s in stages_needed(df, "build")] == ["base", "build"]
    assert [s.name for s in stages_needed(df, "UNRELATED")] == ["unrelated"]


def test_unknown_target():
    with pytest.raises(InvalidArgument, match='target stage "nope" could not be found'):
        stages_needed(parse(MULTI), "nope")


def test_stage_reference_by_index_and_through_global_args():
    df = parse("ARG SRC=first\nFROM busybox AS first\nFROM busybox AS second\nFROM scratch\n"
               "COPY --from=${SRC} /a /b\nCOPY --from=1 /c /d\n")
    assert [s.index for s in stages_needed(df, None)] == [0, 1, 2]
    assert [s.index for s in stages_needed(df, None, {"SRC": "busybox"})] == [1, 2]


def test_a_later_stage_name_is_an_image_not_a_dependency():
    df = parse("FROM busybox AS a\nCOPY --from=b /x /y\nFROM busybox AS b\n")
    assert [s.name for s in stages_needed(df, "a")] == ["a"]


def test_stage_bases_use_global_args_and_build_args():
    df = parse("ARG REG=docker.io\nARG TAG\nARG IMG=${REG}/busybox\nFROM ${IMG}:${TAG:-latest}\n"
               "ARG TAG=ignored\nFROM scratch\n")
    assert stage_bases(df) == ["docker.io/busybox:latest", "scratch"]
    assert stage_bases(df, {"TAG": "1.36", "REG": "localhost:5000"}) == ["localhost:5000/busybox:1.36", "scratch"]
    assert meta_args(df, {"TAG": "1", "HTTP_PROXY": "http://proxy", "OTHER": "x"}) == {
        "HTTP_PROXY": "http://proxy", "REG": "docker.io", "TAG": "1", "IMG": "docker.io/busybox"}


def test_blank_base_is_an_error():
    with pytest.raises(InvalidArgument, match=r"line 2: base name \(\$\{IMG\}\) should not be blank"):
        stage_bases(parse("ARG IMG\nFROM ${IMG}\n"))


def test_stage_lookup():
    df: Dockerfile = parse(MULTI)
    assert df.stage("Build") is df.stages[1]
    assert df.stage("4") is df.stages[4]
    assert df.stage("5") is None and df.stage("golang") is None


# -- robustness ---------------------------------------------------------------------------------------------

_WORD = st.text(alphabet=string.ascii_letters + string.digits + "-_./=", min_size=1, max_size=8)


@given(st.lists(_WORD, min_size=1, max_size=6))
def test_continuations_join_words_with_the_blank_before_the_escape(words):
    ins = only("RUN " + " \\\n".join(words))
    assert ins.args == [" ".join(words)]
    assert ins.line == 2


_FRAGMENTS = st.sampled_from([
    "FROM ", "RUN ", "COPY ", "ENV ", "ARG ", "LABEL ", "HEALTHCHECK ", "ONBUILD ", "CMD ", "SHELL ", "EXPOSE ",
    "--from=", "--mount=", "--chown=", "--interval=", "<<", "<<-", "EOF", "'", '"', "\\", "`", "$", "${", "}",
    ":-", "[", "]", ",", "=", " ", "\t", "\n", "\n\n", "# escape=`\n", "#", "a", "x y", "AS ", "1", "NONE",
])


@given(st.lists(_FRAGMENTS, max_size=25).map("".join))
def test_any_text_parses_or_fails_with_invalid_argument(text):
    try:
        df = parse(text)
    except InvalidArgument:
        return
    assert df.stages
    lines = [i.line for s in df.stages for i in [s.from_instruction, *s.instructions]]
    assert lines == sorted(lines)
