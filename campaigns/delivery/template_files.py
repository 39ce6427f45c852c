"""Where a template's files are: ``templates/NAME/FILE``, and ``templates/NAME/LOCALE/FILE``.

Each file is looked up for the customer's locale, then its language (``zh-CN`` → ``zh``),
then the default, file by file.
"""

from __future__ import annotations

from pathlib import Path

from campaigns.locales import LOCALE_TAG, locale_chain, normalize

SUBJECT = "subject.j2"
TEXT_BODY = "body.txt.j2"
HTML_BODY = "body.html.j2"
REQUIRED_FILES = (SUBJECT, TEXT_BODY)
PAGES_DIR = "pages"
TEMPLATE_FILES = (SUBJECT, TEXT_BODY, HTML_BODY)


def valid_name(name: str) -> bool:
    return bool(name) and name[0] not in "._" and "/" not in name and "\\" not in name


def template_directories(root: Path) -> list[str]:
    """The folders under ``root`` that may hold a template."""
    if not root.is_dir():
        return []
    # templates/pages/ holds the web pages (campaigns.responses.pages), not an email.
    return sorted(p.name for p in root.iterdir() if p.is_dir() and valid_name(p.name) and p.name != PAGES_DIR)


def locale_folders(root: Path, name: str) -> list[str]:
    """The locale folders of one template, as named on disk."""
    folder = root / name
    if not valid_name(name) or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and LOCALE_TAG.match(p.name))


def resolve_files(root: Path, name: str, locale: str | None) -> dict[str, str]:
    """For each file of the template, the path (relative to ``root``) that a customer with
    ``locale`` gets; the HTML part only when one exists."""
    folders = {normalize(folder): folder for folder in locale_folders(root, name)}
    candidates = [folders[tag] for tag in locale_chain(locale) if tag in folders]
    resolved: dict[str, str] = {}
    for file in TEMPLATE_FILES:
        for folder in candidates:
            if (root / name / folder / file).is_file():
                resolved[file] = f"{name}/{folder}/{file}"
                break
        else:
            if (root / name / file).is_file():
                resolved[file] = f"{name}/{file}"
    return resolved
