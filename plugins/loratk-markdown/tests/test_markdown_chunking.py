"""Markdown documents to chunks: front matter and comments dropped, paragraphs and code kept whole."""

import pytest

from loratk_markdown.chunking import blocks, chunk_document, strip_markup_noise


def test_front_matter_and_html_comments_are_dropped():
    text = "---\ntitle: Notes\ntags: [a]\n---\n# Notes\r\n\r\nBody <!-- todo: fix -->text.\n"
    assert strip_markup_noise(text) == "# Notes\n\nBody text.\n"


def test_a_rule_later_in_the_document_is_not_front_matter():
    assert strip_markup_noise("Intro\n\n---\n\nMore\n") == "Intro\n\n---\n\nMore\n"


def test_a_fenced_code_block_with_blank_lines_stays_one_block():
    text = "Before.\n\n```python\nx = 1\n\ny = 2\n```\n\nAfter."
    assert blocks(text) == ["Before.", "```python\nx = 1\n\ny = 2\n```", "After."]


def test_a_heading_opens_a_new_block():
    assert blocks("Some text\n## Next\nits body") == ["Some text", "## Next\nits body"]


def test_small_documents_are_one_chunk():
    assert chunk_document("# Title\n\nOne.\n\nTwo.\n", 1000) == ["# Title\n\nOne.\n\nTwo."]


def test_chunks_respect_the_limit_and_keep_every_word():
    paragraphs = [f"Paragraph {i} " + "word " * 20 for i in range(30)]
    chunks = chunk_document("\n\n".join(paragraphs), 300)
    assert len(chunks) > 5
    assert all(len(chunk) <= 300 for chunk in chunks)
    assert " ".join(chunks).split() == " ".join(paragraphs).split()


def test_a_heading_moves_to_the_chunk_with_its_text():
    text = "A" * 50 + "\n\n## Section two\n\n" + "B" * 50
    assert chunk_document(text, 80) == ["A" * 50, "## Section two\n\n" + "B" * 50]


def test_an_overlong_paragraph_is_split_at_spaces():
    chunks = chunk_document("lorem ipsum " * 50, 100)
    assert all(len(c) <= 100 for c in chunks)
    assert all(not c.startswith(" ") and "lorem" in c for c in chunks)


def test_the_limit_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        chunk_document("text", 0)
