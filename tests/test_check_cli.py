"""`retention check`, run as the real console script on copies of the shipped files:
exit 0 when they are fine, exit 1 with one `file:line:` line per mistake otherwise."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RETENTION = Path(sys.executable).parent / "retention"
# file:line: or file:line:col: at the start of an error line.
LOCATED = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+):(?:(?P<column>\d+):)? ")


@dataclass
class Result:
    code: int
    output: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.strip()]


@dataclass
class Project:
    """A folder with copies of the shipped rules.yaml and templates/."""

    root: Path

    @property
    def rules(self) -> Path:
        return self.root / "rules.yaml"

    @property
    def templates(self) -> Path:
        return self.root / "templates"

    def edit(self, relative: str, old: str, new: str) -> int:
        """Replace one unique fragment of a file; return the line the fragment starts on."""
        path = self.root / relative
        text = path.read_text(encoding="utf-8")
        if text.count(old) != 1:
            raise AssertionError(f"{old!r} occurs {text.count(old)} times in {relative}, expected once")
        path.write_text(text.replace(old, new), encoding="utf-8")
        return text[: text.index(old)].count("\n") + 1

    def check(self) -> Result:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
        env.update(
            RETENTION_DATABASE_URL=f"sqlite:///{self.root}/t.db",
            RETENTION_RULES=str(self.rules),
            RETENTION_TEMPLATES=str(self.templates),
            COLUMNS="200",
        )
        completed = subprocess.run(
            [str(RETENTION), "check"], cwd=self.root, env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )
        output = completed.stdout + completed.stderr
        assert "Traceback" not in output, output
        return Result(completed.returncode, output)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    shutil.copy(REPO / "rules.yaml", tmp_path / "rules.yaml")
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    return Project(tmp_path)


def one_located_error(result: Result) -> tuple[str, int, int | None, str]:
    """(file, line, column, whole line) of the single error line `check` printed."""
    assert result.code == 1, result.output
    assert len(result.lines) == 1, result.output
    match = LOCATED.match(result.lines[0])
    assert match, f"not a file:line: error: {result.lines[0]!r}"
    column = int(match["column"]) if match["column"] else None
    return match["file"], int(match["line"]), column, result.lines[0]


def test_shipped_rules_and_templates_pass(project: Project) -> None:
    result = project.check()
    assert result.code == 0, result.output
    assert result.output.startswith("OK: ")
    assert "5 campaigns" in result.output
    assert "1 survey)" in result.output  # counted nouns agree: not "1 surveys"
    assert not (project.root / "t.db").exists(), "check must not create the database"


# --- rules.yaml mistakes ---------------------------------------------------------------

RULES_MISTAKES = [
    pytest.param("    cooldown: 60d", "    cooldwn: 60d", 5,
                 "unknown key `cooldwn` (did you mean `cooldown`?)", id="misspelt-key"),
    pytest.param("    priority: 10\n", "    priority: high\n", 5,
                 "valid integer", id="wrong-type"),
    pytest.param("    cooldown: 30d", "    cooldown: 30 days", 5,
                 "invalid duration '30 days': write a number and a unit", id="bad-duration"),
    pytest.param('"0 10 * * TUE"', '"0 25 * * TUE"', 5,
                 "invalid cron expression '0 25 * * TUE'", id="bad-cron"),
    pytest.param("    template: check_in", "    template: check_inn", 5,
                 "unknown template 'check_inn' (did you mean 'check_in'? templates in",
                 id="unknown-template"),
]


@pytest.mark.parametrize(("old", "new", "column", "message"), RULES_MISTAKES)
def test_rules_mistake_fails_with_one_located_line(
    project: Project, old: str, new: str, column: int, message: str
) -> None:
    line = project.edit("rules.yaml", old, new)
    file, reported_line, reported_column, text = one_located_error(project.check())
    assert file == str(project.rules)
    assert (reported_line, reported_column) == (line, column), text
    assert message in text


# --- template mistakes -----------------------------------------------------------------


def test_undefined_variable_is_located_in_the_template(project: Project) -> None:
    line = project.edit("templates/check_in/body.txt.j2",
                        "Or jump straight back in:", "Or jump straight back in, {{ customer.nickname }}:")
    file, reported_line, _, text = one_located_error(project.check())
    assert (file, reported_line) == ("templates/check_in/body.txt.j2", line), text
    assert "'customer' has no attribute 'nickname' — available: " in text


def test_undefined_top_level_name_is_located_in_the_template(project: Project) -> None:
    line = project.edit("templates/exit_survey/subject.j2", "Sorry to see you go",
                        "{{ greeting }} Sorry to see you go")
    file, reported_line, _, text = one_located_error(project.check())
    assert (file, reported_line) == ("templates/exit_survey/subject.j2", line), text
    assert "undefined name 'greeting'" in text


def test_template_syntax_error_is_located_in_the_template(project: Project) -> None:
    line = project.edit("templates/we_miss_you/body.txt.j2", "Warmly,", "{% frobnicate %}Warmly,")
    file, reported_line, _, text = one_located_error(project.check())
    assert (file, reported_line) == ("templates/we_miss_you/body.txt.j2", line), text
    assert "unknown tag 'frobnicate'" in text


def test_template_without_unsubscribe_link_names_the_file_and_the_fix(project: Project) -> None:
    project.edit("templates/feature_reports/body.txt.j2",
                 "Don't want these emails? Unsubscribe: {{ unsubscribe_url }}\n", "")
    result = project.check()
    assert result.code == 1, result.output
    # A missing link has no line to point at: the error names the file only.
    assert result.lines == [
        "templates/feature_reports/body.txt.j2: the text part never shows {{ unsubscribe_url }}: "
        "every email must carry a visible unsubscribe link"
    ]


def test_every_problem_is_reported_in_one_run(project: Project) -> None:
    rules_line = project.edit("rules.yaml", "    template: check_in", "    template: check_inn")
    template_line = project.edit("templates/we_miss_you/body.txt.j2", "Warmly,", "{% frobnicate %}Warmly,")
    result = project.check()
    assert result.code == 1
    located = sorted((m["file"], int(m["line"])) for m in map(LOCATED.match, result.lines) if m)
    assert len(located) == len(result.lines) == 2, result.output
    assert located == sorted([(str(project.rules), rules_line),
                              ("templates/we_miss_you/body.txt.j2", template_line)])


def test_template_may_read_campaign_survey(project: Project) -> None:
    project.edit("templates/check_in/body.txt.j2", "Cheers,",
                 "{% if campaign.survey %}Tell us more.{% endif %}Cheers,")
    result = project.check()
    assert result.code == 0, result.output


# --- files that cannot be read: still one clear line, never a traceback -----------------


def test_missing_rules_file_says_how_to_point_at_it(project: Project) -> None:
    project.rules.unlink()
    result = project.check()
    assert result.code == 1
    assert result.lines == [
        f"{project.rules}: file not found (set RETENTION_RULES or run from the folder holding rules.yaml)"
    ]


def test_rules_file_that_is_not_utf8_is_one_error(project: Project) -> None:
    project.rules.write_bytes(b"\xff\xfe defaults: {}\n")
    result = project.check()
    assert result.code == 1
    assert len(result.lines) == 1 and result.lines[0].startswith(f"{project.rules}:1: not UTF-8 text")


def test_missing_templates_folder_lists_each_unknown_template(project: Project) -> None:
    shutil.rmtree(project.templates)
    result = project.check()
    assert result.code == 1
    assert len(result.lines) == 5
    assert all("unknown template" in line and LOCATED.match(line) for line in result.lines)


def test_tagged_sequence_in_rules_loads_like_a_plain_one(project: Project) -> None:
    project.rules.write_text(
        "campaigns: !custom\n  - id: a\n    template: check_in\n    once: true\n", encoding="utf-8"
    )
    result = project.check()
    assert result.code == 0, result.output


def test_huge_duration_in_rules_is_a_located_error(project: Project) -> None:
    project.edit("rules.yaml", "  check_every: 5m", "  check_every: 99999999999999d")
    file, _, _, text = one_located_error(project.check())
    assert file == str(project.rules)
    assert "check_every" in text
