"""Sandboxed template rendering: shipped templates, escaping, located errors, sandbox."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from campaigns.delivery.context import (
    CUSTOMER_FIELDS,
    build_context,
    build_sample_context,
    customer_context,
    sample_customer,
)
from campaigns.delivery.rendering import TemplateStore
from campaigns.errors import TemplateError
from campaigns.models import Customer

SHIPPED = Path(__file__).resolve().parent.parent / "templates"
SHIPPED_NAMES = ["check_in", "exit_survey", "feature_reports", "we_miss_you", "win_back_offer"]

GOOD_TEXT = "Hi {{ customer.first_name or 'there' }}\nUnsubscribe: {{ unsubscribe_url }}\n"


def make_store(root: Path, files: dict[str, str]) -> TemplateStore:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return TemplateStore(root)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "templates"


def context(**customer: object) -> dict[str, object]:
    return build_sample_context(template="t", customer=sample_customer(**customer))


# --- the shipped templates -------------------------------------------------

def test_shipped_templates_are_all_listed() -> None:
    assert TemplateStore(SHIPPED).names() == SHIPPED_NAMES


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_template_passes_check(name: str) -> None:
    store = TemplateStore(SHIPPED)
    assert store.check(name, build_sample_context(template=name)) == []


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_template_renders_text_and_html_with_unsubscribe_link(name: str) -> None:
    rendered = TemplateStore(SHIPPED).render(name, build_sample_context(template=name))
    assert rendered.subject and "\n" not in rendered.subject
    assert "https://retention.invalid/u/sample-token" in rendered.text
    assert rendered.html is not None
    assert 'href="https://retention.invalid/u/sample-token"' in rendered.html


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_template_greets_a_customer_without_first_name(name: str) -> None:
    rendered = TemplateStore(SHIPPED).render(name, context(first_name=None))
    assert "None" not in rendered.subject + rendered.text
    assert "Hi there," in rendered.text


def test_we_miss_you_shows_the_offer_only_to_customers_who_have_one() -> None:
    store = TemplateStore(SHIPPED)
    without = store.render("we_miss_you", context())
    with_offer = store.render("we_miss_you", context(attributes={"offer": "20% off <b>"}))
    assert "20% off" not in without.text
    assert "20% off <b>" in with_offer.text
    assert with_offer.html is not None and "20% off &lt;b&gt;" in with_offer.html


def test_check_all_on_shipped_templates_finds_nothing() -> None:
    assert TemplateStore(SHIPPED).check_all() == []


# --- escaping and subject --------------------------------------------------

def test_html_body_escapes_values_and_text_body_keeps_them_raw(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "Hi {{ customer.first_name }}",
        "t/body.txt.j2": "Hi {{ customer.first_name }} {{ unsubscribe_url }}",
        "t/body.html.j2": "<p>Hi {{ customer.first_name }}</p>",
    })
    rendered = store.render("t", context(first_name="<script>alert(1)</script>"))
    assert rendered.html == "<p>Hi &lt;script&gt;alert(1)&lt;/script&gt;</p>"
    assert "<script>alert(1)</script>" in rendered.text
    assert rendered.subject == "Hi <script>alert(1)</script>"


def test_layout_extended_by_html_body_is_escaped_too(root: Path) -> None:
    store = make_store(root, {
        "layout.html.j2": "<title>{{ customer.first_name }}</title>{% block content %}{% endblock %}",
        "t/subject.j2": "s",
        "t/body.txt.j2": GOOD_TEXT,
        "t/body.html.j2": '{% extends "layout.html.j2" %}{% block content %}x{% endblock %}',
    })
    rendered = store.render("t", context(first_name="A&B"))
    assert rendered.html == "<title>A&amp;B</title>x"


def test_partials_are_escaped_by_the_part_that_includes_them_whatever_their_name(
    root: Path,
) -> None:
    store = make_store(root, {
        "greeting.j2": "Hi {{ customer.first_name }}",
        "t/subject.j2": "s",
        "t/body.txt.j2": '{% include "greeting.j2" %} {{ unsubscribe_url }}',
        "t/body.html.j2": '<p>{% include "greeting.j2" %}</p>',
    })
    rendered = store.render("t", context(first_name="<b>Ada</b>"))
    assert rendered.text.startswith("Hi <b>Ada</b> ")
    assert rendered.html == "<p>Hi &lt;b&gt;Ada&lt;/b&gt;</p>"


def test_subject_is_collapsed_to_one_line_so_no_header_can_be_injected(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "Hello\n  {{ customer.first_name }}\r\nBcc: victim@example.com\n",
        "t/body.txt.j2": GOOD_TEXT,
    })
    rendered = store.render("t", context(first_name="Ada\r\nX-Evil: 1"))
    assert rendered.subject == "Hello Ada X-Evil: 1 Bcc: victim@example.com"
    assert rendered.html is None


def test_none_values_print_as_nothing(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "Plan: {{ customer.plan }}.",
        "t/body.txt.j2": GOOD_TEXT,
    })
    assert store.render("t", context(plan=None)).subject == "Plan: ."


# --- located errors ----------------------------------------------------------

def test_misspelled_customer_field_names_file_line_and_available_fields(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "s",
        "t/body.txt.j2": "Hello,\n\nDear {{ customer.frist_name }},\n{{ unsubscribe_url }}\n",
    })
    with pytest.raises(TemplateError) as caught:
        store.render("t", context())
    error = caught.value
    assert error.file.endswith("templates/t/body.txt.j2")
    assert error.line == 3
    assert error.message.startswith(
        "'customer' has no attribute 'frist_name' — available: activity_count, attributes,"
    )
    assert "first_name" in error.message


def test_undefined_name_error_lists_the_context_names(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "s",
        "t/body.txt.j2": "{{ unsubscribe_url }}\n{% if true %}\n  {{ coupon }}\n{% endif %}\n",
    })
    errors = store.check("t", build_sample_context(template="t"))
    assert [(e.file.rsplit("/", 2)[-2:], e.line) for e in errors] == [(["t", "body.txt.j2"], 3)]
    assert errors[0].message == (
        "undefined name 'coupon' — available: campaign, customer, survey_url, track, "
        "unsubscribe_url — in: {{ coupon }}"
    )


def test_missing_attribute_suggests_the_is_defined_test(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "{{ customer.attributes.offer }}",
        "t/body.txt.j2": GOOD_TEXT,
    })
    with pytest.raises(TemplateError, match=r"'customer.attributes' has no attribute 'offer'") as caught:
        store.render("t", context())
    assert "{% if customer.attributes.offer is defined %}" in caught.value.message
    assert caught.value.file.endswith("t/subject.j2")
    assert caught.value.line == 1


def test_error_inside_a_block_of_an_extending_template_points_at_the_child(root: Path) -> None:
    store = make_store(root, {
        "layout.html.j2": "<html>\n{% block content %}{% endblock %}\n{{ unsubscribe_url }}</html>",
        "t/subject.j2": "s",
        "t/body.txt.j2": GOOD_TEXT,
        "t/body.html.j2": (
            '{% extends "layout.html.j2" %}\n{% block content %}\n<p>\n'
            "{{ customer.plann }}\n</p>\n{% endblock %}\n"
        ),
    })
    errors = store.check("t", build_sample_context(template="t"))
    assert len(errors) == 1
    assert errors[0].file.endswith("templates/t/body.html.j2")
    assert errors[0].line == 4
    assert "'customer' has no attribute 'plann'" in errors[0].message


def test_error_in_the_layout_points_at_the_layout(root: Path) -> None:
    store = make_store(root, {
        "layout.html.j2": "<html>\n\n{{ brand.name }}\n{{ unsubscribe_url }}</html>",
        "t/subject.j2": "s",
        "t/body.txt.j2": GOOD_TEXT,
        "t/body.html.j2": '{% extends "layout.html.j2" %}',
    })
    with pytest.raises(TemplateError, match="undefined name 'brand'") as caught:
        store.render("t", context())
    assert caught.value.file.endswith("templates/layout.html.j2")
    assert caught.value.line == 3


def test_broken_layout_is_reported_once_by_check_all(root: Path) -> None:
    body = '{% extends "layout.html.j2" %}{% block content %}{{ unsubscribe_url }}{% endblock %}'
    store = make_store(root, {
        "layout.html.j2": "<html>\n{% block content %}\n</html>",
        "a/subject.j2": "s", "a/body.txt.j2": GOOD_TEXT, "a/body.html.j2": body,
        "b/subject.j2": "s", "b/body.txt.j2": GOOD_TEXT, "b/body.html.j2": body,
    })
    errors = store.check_all()
    assert [(e.file.rsplit("/", 1)[-1], e.line) for e in errors] == [("layout.html.j2", 3)]
    assert "Unexpected end of template" in errors[0].message


def test_syntax_error_names_file_and_line(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "s",
        "t/body.txt.j2": "line one\n{{ unsubscribe_url }}\n{% if customer.plan %}\nno endif\n",
    })
    errors = store.check("t", build_sample_context(template="t"))
    assert len(errors) == 1
    assert errors[0].file.endswith("templates/t/body.txt.j2")
    assert errors[0].line == 4
    assert "Unexpected end of template" in errors[0].message
    assert errors[0].format().startswith(errors[0].file + ":4: ")


def test_syntax_error_at_send_time_is_a_template_error(root: Path) -> None:
    store = make_store(root, {"t/subject.j2": "{{ oops", "t/body.txt.j2": GOOD_TEXT})
    with pytest.raises(TemplateError) as caught:
        store.render("t", context())
    assert caught.value.file.endswith("t/subject.j2")
    assert caught.value.line == 1


def test_check_reports_every_broken_file_not_just_the_first(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "{{ nope }}",
        "t/body.txt.j2": "{% for %}",
        "t/body.html.j2": "{{ unsubscribe_url }}{{ customer.x }}",
    })
    errors = store.check("t", build_sample_context(template="t"))
    files = sorted(e.file.rsplit("/", 1)[-1] for e in errors)
    assert files == ["body.html.j2", "body.txt.j2", "subject.j2"]


def test_missing_extended_layout_is_reported_at_the_extends_line(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "s",
        "t/body.txt.j2": GOOD_TEXT,
        "t/body.html.j2": '\n{% extends "layot.html.j2" %}',
    })
    with pytest.raises(TemplateError, match=r"no template file 'layot\.html\.j2'") as caught:
        store.render("t", context())
    assert caught.value.file.endswith("t/body.html.j2")
    assert caught.value.line == 2


def test_python_error_raised_by_a_template_is_a_template_error(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "s",
        "t/body.txt.j2": "{{ unsubscribe_url }}\n{{ customer.activity_count / 0 }}",
    })
    with pytest.raises(TemplateError, match="ZeroDivisionError: division by zero") as caught:
        store.render("t", context())
    assert caught.value.line == 2


# --- required files and links ------------------------------------------------

def test_missing_text_body_is_reported(root: Path) -> None:
    store = make_store(root, {"t/subject.j2": "s",
                              "t/body.html.j2": '<a href="{{ unsubscribe_url }}">Unsubscribe</a>'})
    errors = store.check("t", build_sample_context(template="t"))
    assert [e.message for e in errors] == [
        "missing body.txt.j2: every template needs subject.j2 and body.txt.j2"
    ]
    assert errors[0].file.endswith("templates/t/body.txt.j2")
    assert not store.exists("t")
    assert store.names() == []


def test_missing_template_directory_is_reported(root: Path) -> None:
    store = make_store(root, {"t/subject.j2": "s", "t/body.txt.j2": GOOD_TEXT})
    errors = store.check("nope", build_sample_context(template="nope"))
    assert len(errors) == 1
    assert "no template directory 'nope'" in errors[0].message
    with pytest.raises(TemplateError, match=r"no template 'nope'.*templates here: t"):
        store.render("nope", context())


@pytest.mark.parametrize("name", ["../etc", ".hidden", "a/b", ""], ids=repr)
def test_names_outside_the_templates_directory_do_not_exist(root: Path, name: str) -> None:
    store = make_store(root, {"t/subject.j2": "s", "t/body.txt.j2": GOOD_TEXT})
    assert not store.exists(name)


def test_text_part_without_unsubscribe_link_is_an_error(root: Path) -> None:
    store = make_store(root, {"t/subject.j2": "s", "t/body.txt.j2": "Hi there"})
    errors = store.check("t", build_sample_context(template="t"))
    assert [e.message for e in errors] == [
        "the text part never shows {{ unsubscribe_url }}: "
        "every email must carry a visible unsubscribe link"
    ]
    assert errors[0].file.endswith("t/body.txt.j2")


def test_html_part_without_unsubscribe_link_is_an_error(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "s", "t/body.txt.j2": GOOD_TEXT, "t/body.html.j2": "<p>hi</p>",
    })
    errors = store.check("t", build_sample_context(template="t"))
    assert [e.message for e in errors] == [
        "the HTML part has no visible link to {{ unsubscribe_url }} (an <a href> with text, outside "
        "comments and hidden elements): every email must carry a visible unsubscribe link"
    ]


def test_unsubscribe_link_shown_only_in_a_branch_the_sample_skips_is_an_error(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "s",
        "t/body.txt.j2": "{% if customer.plan == 'free' %}{{ unsubscribe_url }}{% endif %}",
    })
    assert len(store.check("t", build_sample_context(template="t"))) == 1


def test_survey_campaign_requires_the_survey_link(root: Path) -> None:
    store = make_store(root, {"t/subject.j2": "s", "t/body.txt.j2": GOOD_TEXT})
    errors = store.check(
        "t", build_sample_context(template="t"), required_names=("unsubscribe_url", "survey_url")
    )
    assert [e.message for e in errors] == [
        "the text part never shows {{ survey_url }}: a survey campaign must link to its survey"
    ]


def test_empty_subject_is_an_error(root: Path) -> None:
    store = make_store(root, {"t/subject.j2": "{{ customer.plan or '' }}\n", "t/body.txt.j2": GOOD_TEXT})
    with pytest.raises(TemplateError, match="the subject renders empty"):
        store.render("t", context(plan=None))


# --- sandbox -----------------------------------------------------------------

@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ ''|attr('__class__') }}",
        "{{ (''|attr('__class__')|attr('__mro__'))[1].__subclasses__() }}",
        "{{ track.__globals__ }}",
        "{{ customer._label }}",
        "{% set _ = customer.attributes.update({'x': 1}) %}",
        "{{ customer.signed_up_at.__class__.__subclasses__() }}",
    ],
    ids=["dunder_mro", "cycler_globals", "attr_filter", "attr_chain_subclasses",
         "function_globals", "private_attribute", "mutate_data", "datetime_class"],
)
def test_sandbox_blocks_reaching_python_internals(root: Path, expression: str) -> None:
    store = make_store(root, {"t/subject.j2": "s", "t/body.txt.j2": expression})
    with pytest.raises(TemplateError, match=r"^.*unsafe template construct: ") as caught:
        store.render("t", context())
    assert "<class" not in str(caught.value)
    assert "__builtins__" not in str(caught.value)
    assert "off limits: templates may read data" in str(caught.value)
    errors = store.check("t", build_sample_context(template="t"))
    assert any("unsafe template construct" in e.message for e in errors)


def test_dict_methods_that_only_read_are_allowed(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "{{ customer.attributes.get('offer', 'none') }} {{ customer.keys()|length }}",
        "t/body.txt.j2": GOOD_TEXT,
    })
    assert store.render("t", context()).subject == f"none {len(CUSTOMER_FIELDS)}"


# --- context -----------------------------------------------------------------

def test_customer_context_and_sample_customer_have_the_same_fields() -> None:
    now = datetime(2024, 6, 5, 12, tzinfo=UTC)
    row = Customer(
        external_id="c-7", email="bo@example.com", first_name="Bo", plan="team",
        last_active_at=now - timedelta(days=40, hours=3), attributes={"company": "Initech"},
    )
    data = customer_context(row, now=now)
    assert set(data) == set(sample_customer()) == set(CUSTOMER_FIELDS)
    assert data["id"] == "c-7"
    assert data["days_inactive"] == 40
    assert data["attributes"] == {"company": "Initech"}


def test_sample_customer_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown customer field"):
        sample_customer(frist_name="Ada")


def test_build_context_leaves_survey_url_out_of_non_survey_campaigns(root: Path) -> None:
    store = make_store(root, {"t/subject.j2": "s", "t/body.txt.j2": "{{ survey_url }}"})
    ctx = build_context(
        customer=sample_customer(), campaign={"id": "c", "template": "t"},
        unsubscribe_url="https://x.example/u/1", survey_url=None, track=lambda url: url,
    )
    assert "survey_url" not in ctx
    with pytest.raises(TemplateError, match="undefined name 'survey_url'"):
        store.render("t", ctx)


def test_track_is_called_for_each_tracked_link(root: Path) -> None:
    store = make_store(root, {
        "t/subject.j2": "s",
        "t/body.txt.j2": "{{ track('https://a.example/x') }} {{ unsubscribe_url }}",
        "t/body.html.j2": "<a href=\"{{ track('https://a.example/x?a=1&b=2') }}\">{{ unsubscribe_url }}",
    })
    ctx = build_context(
        customer=sample_customer(), campaign={"id": "c", "template": "t"},
        unsubscribe_url="https://x.example/u/1", survey_url=None,
        track=lambda url: "https://x.example/c/" + url.rsplit("/", 1)[-1],
    )
    rendered = store.render("t", ctx)
    assert rendered.text == "https://x.example/c/x https://x.example/u/1\n"
    assert rendered.html == '<a href="https://x.example/c/x?a=1&amp;b=2">https://x.example/u/1'


def test_edits_reach_a_store_that_already_rendered(root: Path) -> None:
    store = make_store(root, {"t/subject.j2": "one", "t/body.txt.j2": GOOD_TEXT})
    assert store.render("t", context()).subject == "one"
    path = root / "t" / "subject.j2"
    path.write_text("two", encoding="utf-8")
    stat = path.stat()
    # Bump the mtime explicitly: coarse file system clocks could hide the edit.
    os.utime(path, (stat.st_atime, stat.st_mtime + 5))
    assert store.render("t", context()).subject == "two"


def test_a_sending_store_sees_an_edit_at_once_after_forget(root: Path) -> None:
    """A sending store keeps what it read for ``fresh_for`` seconds; a watcher that saw the edit
    calls ``forget`` so the next render (the live preview's, a send's) has it at once."""
    make_store(root, {"t/subject.j2": "Old subject", "t/body.txt.j2": GOOD_TEXT,
                      "t/fr/subject.j2": "Ancien"})
    store = TemplateStore(root, fresh_for=3600)
    assert store.render("t", context()).subject == "Old subject"
    assert store.render("t", context(), locale="fr").subject == "Ancien"
    (root / "t" / "subject.j2").write_text("New subject", encoding="utf-8")
    (root / "t" / "de").mkdir()
    (root / "t" / "de" / "subject.j2").write_text("Neu", encoding="utf-8")
    assert store.render("t", context()).subject == "Old subject"  # kept, as meant
    store.forget()
    assert store.render("t", context()).subject == "New subject"
    assert store.render("t", context(), locale="de").subject == "Neu"
