"""Every `captioner ...` command in the README and docs/ parses with today's CLI, and the README's
quick start runs on a real clip: the documentation cannot drift from the commands.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "MODEL_CARD.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = ("bash", "sh", "shell", "console", "")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block, in order."""
    blocks, language, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, body = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(body) + "\n"))
                language = None
        elif language is not None:
            body.append(line)
    return blocks


def shell_commands(text: str) -> list[str]:
    """Each command line of the shell code blocks: continuations joined, comments dropped, and
    `a && b`, `a | b`, `a; b` split into their commands."""
    commands = []
    for language, block in code_blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue  # not a shell line (a Python or YAML block without a language tag)
            command: list[str] = []
            redirect_target = False
            for word in words + ["&&"]:
                if redirect_target:  # the file of a `> FILE` redirection
                    redirect_target = False
                elif word in ("&&", "||", "|", ";"):
                    if command:
                        commands.append(shlex.join(command))
                    command = []
                elif re.fullmatch(r"\d?(>>?|<)(&\d)?", word):
                    redirect_target = not word.endswith(("&1", "&2"))
                elif re.match(r"\d?(>>?|<)", word):
                    continue  # `>FILE`, `2>/dev/null`
                else:
                    command.append(word)
    return commands


def captioner_commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        if doc.is_file():
            for command in shell_commands(doc.read_text(encoding="utf-8")):
                words = shlex.split(command)
                if words and words[0] == "captioner":
                    found.append((doc.name, command))
    return found


def test_the_docs_hold_captioner_commands():
    commands = captioner_commands()
    assert len(commands) >= 20
    assert any(doc == "README.md" for doc, _ in commands)


def test_code_block_commands_are_split_as_a_shell_would():
    text = ("```bash\ncaptioner a x \\\n    --b 1   # note\nsetup && captioner c | head\n# captioner d\n"
            "captioner e --json > out.jsonl 2>/dev/null\n```\n```python\ncaptioner f\n```\n")
    assert shell_commands(text) == ["captioner a x --b 1", "setup", "captioner c", "head", "captioner e --json"]


@pytest.mark.parametrize("doc, command", captioner_commands())
def test_every_documented_command_parses(doc, command, capsys):
    argv = shlex.split(command)[1:]
    parser = build_parser()
    if argv in (["--version"],) or "--help" in argv or "-h" in argv:
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(argv)
        assert exited.value.code == 0
        return
    try:
        parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{doc}: `{command}` does not parse: {capsys.readouterr().err.strip()}")


def _runnable(command: str) -> bool:
    """A caption or models command whose every path argument exists: cheap to run for real."""
    words = shlex.split(command)
    if len(words) < 2 or words[1] not in ("caption", "models"):
        return False
    paths = [w for w in words[2:] if not w.startswith("-") and ("/" in w or "." in w)]
    return all((ROOT / p).exists() for p in paths) and not any(w.startswith("--features") for w in words)


@pytest.mark.slow
def test_the_readme_quick_start_runs():
    commands = [c for doc, c in captioner_commands() if doc == "README.md" and _runnable(c)]
    assert any("caption ../shared/data" in c for c in commands)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command in commands:
        result = subprocess.run([sys.executable, "-m", "captioner", *shlex.split(command)[1:]], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"`{command}`: {result.stderr}"
        assert result.stdout.strip()
