"""A new user's first minutes in n8n's editor, in a real headless Chromium: the packed node in a real
n8n 2.41.1, a real worker and the Ollama stand-in (the session's stack)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.browser.editor.conftest import doc_screenshot
from tests.browser.editor.editor import Editor
from tests.e2e.stack import (
    AGENT_TOOL_WORKFLOW_ID,
    DEFAULT_PROMPT_WORKFLOW_ID,
    WORKFLOWS,
    Stack,
    assignment,
    load_workflow,
    tool_calling_model,
)
from tests.ollama_standin import DEFAULT_ANSWER

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture
def editor(page: Page, e2e_stack: Stack) -> Iterator[Editor]:
    e2e_stack.ollama.clear()
    yield Editor(page, e2e_stack.n8n.url)
    e2e_stack.ollama.clear()


def test_an_empty_workflow_finds_the_node_by_name_and_adds_it(editor: Editor) -> None:
    editor.new_workflow()
    editor.page.locator('[data-test-id="canvas-add-button"]').click()

    found = editor.search_nodes("Role Injector")

    expect(found).to_have_count(1)
    expect(found.first).to_contain_text("Role Injector")
    doc_screenshot(editor.page, "editor-search")
    found.first.click()
    editor.page.get_by_role("button", name="Add to workflow").click()
    expect(editor.page.locator('[data-test-id="ndv"]')).to_be_visible()
    editor.close_node()
    expect(editor.node("Role Injector")).to_be_visible()


def test_the_role_list_comes_from_the_worker_and_the_pick_shows_on_the_canvas(editor: Editor,
                                                                               e2e_stack: Stack) -> None:
    roles = e2e_stack.worker_roles()
    editor.new_workflow()
    editor.page.locator('[data-test-id="canvas-add-button"]').click()
    found = editor.search_nodes("Role Injector")
    expect(found).to_have_count(1)
    found.first.click()
    editor.page.get_by_role("button", name="Add to workflow").click()
    editor.page.locator('[data-test-id="node-credentials-select"]').click()
    editor.page.locator('[data-test-id="node-credentials-select-item-roleInjectorLocal"]').click()

    editor.page.locator('[data-test-id="rlc-input"]').click()
    items = editor.page.locator('[data-test-id="rlc-item"]')

    expect(items).to_have_count(len(roles))
    # Each entry: the name, the size in tokens and the description, as the worker reports them. n8n
    # cuts an entry off at the list's width, so the size comes right after the name, where it is seen.
    role = next(r for r in roles if r["name"] == "general-assistant")
    entry = items.filter(has_text=f"{role['name']} · ")
    expect(entry).to_have_text(f"{role['name']} · {role['tokens']:,} tokens — {role['description']}")
    for item in items.all():
        assert item.evaluate(SIZE_IS_SHOWN), item.text_content()
    doc_screenshot(editor.page, "editor-role-picker")
    entry.click()
    editor.close_node()
    expect(editor.node("Role Injector")).to_contain_text("general-assistant")


# Whether an entry's " tokens" ends inside the part of its line that is not cut off.
SIZE_IS_SHOWN = """entry => {
    const walker = document.createTreeWalker(entry, NodeFilter.SHOW_TEXT);
    for (let text = walker.nextNode(); text; text = walker.nextNode()) {
        const end = text.data.indexOf(" tokens");
        if (end < 0) continue;
        const range = document.createRange();
        range.setStart(text, 0);
        range.setEnd(text, end + " tokens".length);
        const shown = text.parentElement.getBoundingClientRect();
        return range.getBoundingClientRect().right <= shown.right + 0.5;
    }
    return false;
}"""


def test_the_node_offers_the_roles_variables_a_query_and_docs_that_exist(editor: Editor, e2e_stack: Stack) -> None:
    editor.open("roleChatOllama")  # its Role Injector: agi-engineer, user_name set under Variables
    editor.open_node("Role Injector")
    page = editor.page

    # Variables: the name is one of the role's own variables, the required one marked.
    name = page.locator('[data-test-id="parameter-input-name"]')
    expect(name.locator("input").first).to_have_value("user_name (required)")
    name.locator("input").first.click()
    offered = page.locator(".el-select-dropdown__list .option-headline:visible")
    expect(offered).to_have_text(["user_name (required)", "language"])
    page.keyboard.press("Escape")
    # The Query option is there to add.
    page.locator('[data-test-id="collection-parameter-add"]').click()
    expect(page.locator('[data-test-id="collection-parameter-option"]').filter(has_text="Query")).to_have_count(1)
    page.keyboard.press("Escape")

    # Docs: the node's link and the credential's lead to the page the worker serves (at its default
    # URL, http://localhost:8000; here the session's worker answers on its own port).
    docs = page.locator('[data-test-id="ndv"] a', has_text="Docs")
    assert (docs.get_attribute("href") or "").startswith("http://localhost:8000/docs/n8n-node?")
    page.locator('[data-test-id="credential-edit-button"]').click()
    credential_docs = page.locator('a[href="http://localhost:8000/docs/n8n-node#credentials"]')
    expect(credential_docs).to_be_visible()
    served = requests.get(e2e_stack.worker.url + "/docs/n8n-node", timeout=30)
    assert served.status_code == 200 and 'id="credentials"' in served.text


def test_the_default_prompt_after_a_manual_trigger_fails_naming_it(editor: Editor) -> None:
    editor.open(DEFAULT_PROMPT_WORKFLOW_ID)
    editor.execute()
    expect(editor.failed("Role Injector")).to_be_visible(timeout=60_000)
    editor.open_node("Role Injector")
    expect(editor.node_error().first).to_have_text(
        "The Prompt is empty for item 1: {{ $json.chatInput }} gives nothing")
    expect(editor.node_error().last).to_contain_text("clear Prompt")


def test_executing_the_sample_chat_shows_the_output_and_sends_the_role(editor: Editor, e2e_stack: Stack) -> None:
    workflow = load_workflow("role-chat-ollama.json")
    expected = e2e_stack.inject(role="agi-engineer", prompt=assignment(workflow, "Sample chat input", "chatInput"),
                                model=assignment(workflow, "Settings", "model"),
                                variables={"user_name": assignment(workflow, "Settings", "user_name")}).json()
    editor.open("roleChatOllama")

    editor.execute()

    expect(editor.succeeded("Chat reply")).to_be_visible(timeout=60_000)
    output = editor.open_node("Role Injector")
    expect(output).to_contain_text("1 item")
    # The table shows the fitted prompt's first words (escaped line breaks shown as "\n").
    expect(output).to_contain_text(expected["system"].split("\n", 1)[0])
    doc_screenshot(editor.page, "editor-run-output")
    (chat,) = e2e_stack.ollama.requests_to("/api/chat")
    assert chat.body["messages"][0] == {"role": "system", "content": expected["system"]}
    assert chat.body["options"]["num_ctx"] == expected["usage"]["num_ctx"]


def test_the_chat_panel_answers_with_the_role_behind_it(editor: Editor, e2e_stack: Stack) -> None:
    editor.open("roleAgentChat")
    box = editor.open_chat()

    box.fill("Plan a weekend in Lisbon for me.")
    box.press("Enter")

    answer = editor.page.locator(".chat-message-from-bot").filter(has_text=DEFAULT_ANSWER)
    expect(answer).to_be_visible(timeout=60_000)
    (chat,) = e2e_stack.ollama.requests_to("/api/chat")
    system = chat.body["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("You are a careful, capable general assistant talking with Alex.")
    assert chat.body["messages"][-1] == {"role": "user", "content": "Plan a weekend in Lisbon for me."}


def test_an_ai_agent_offers_the_node_as_a_tool_and_runs_it(editor: Editor, e2e_stack: Stack) -> None:
    editor.open("roleAgentChat")
    agent = editor.node("AI Agent")
    agent.locator('[data-test-id="canvas-node-input-handle"][data-connection-type="ai_tool"] '
                  '[data-test-id="canvas-handle-plus"]').click()
    expect(editor.nodes_panel()).to_contain_text("Tools")

    offered = editor.search_nodes("Role Injector")

    expect(offered).to_have_count(1)
    expect(offered.first).to_contain_text("Role Injector Tool")

    e2e_stack.ollama.answer = tool_calling_model
    editor.open(AGENT_TOOL_WORKFLOW_ID)
    editor.execute()

    expect(editor.succeeded("AI Agent")).to_be_visible(timeout=60_000)
    expect(editor.succeeded("Role Injector Tool")).to_be_visible()
    output = editor.open_node("Role Injector Tool")
    editor.page.locator('[data-test-id="ndv"] [data-test-id="radio-button-json"]').last.click()
    expect(output).to_contain_text('"instructions"')
    tool_message = next(m for m in e2e_stack.ollama.requests_to("/api/chat")[-1].body["messages"]
                        if m["role"] == "tool")
    (answer,) = json.loads(tool_message["content"])
    assert answer["role"] == "general-assistant"
    assert re.match(r"You are a careful, capable general assistant", answer["instructions"])


# Space kept free around each node's box, in pixels, so that names and subtitles under the nodes
# do not run into each other either.
MARGIN = 20


def test_no_node_of_a_sample_workflow_overlaps_another(editor: Editor) -> None:
    samples = [load_workflow(path.name) for path in sorted(WORKFLOWS.glob("*.json"))
               if not path.name.startswith("credentials")]
    assert len(samples) == 5
    for workflow in samples:
        editor.open(workflow["id"])
        nodes = editor.page.locator('[data-test-id="canvas-node"]:not([data-node-type="n8n-nodes-base.stickyNote"])')
        expect(nodes).to_have_count(sum(n["type"] != "n8n-nodes-base.stickyNote" for n in workflow["nodes"]))
        boxes = {node.get_attribute("data-node-name"): node.bounding_box() for node in nodes.all()}
        names = sorted(boxes)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                a, b = boxes[first], boxes[second]
                assert a is not None and b is not None
                apart = (a["x"] + a["width"] + MARGIN <= b["x"] or b["x"] + b["width"] + MARGIN <= a["x"]
                         or a["y"] + a["height"] + MARGIN <= b["y"] or b["y"] + b["height"] + MARGIN <= a["y"])
                assert apart, f"{workflow['name']}: {first} {a} and {second} {b} overlap"


def test_without_ollama_every_sample_says_it_cannot_reach_ollama_and_where(editor: Editor, e2e_stack: Stack) -> None:
    """No Ollama running (nothing listens at its URL): each sample's model step fails with the worker's
    words, which name Ollama, the URL it was looked for at and what to do."""
    expected = f"cannot reach Ollama at {e2e_stack.ollama.url}: "
    hint = "Start Ollama there, or point the worker at it"
    with e2e_stack.ollama.stopped():
        # Executed from the editor: the failing step's details say it (the HTTP Request nodes under
        # n8n's "Bad gateway", the AI Agent as its message).
        for workflow, step in (("roleChatOllama", "Ollama /api/chat"), ("rawChatmlGenerate", "Ollama /api/generate"),
                               ("roleAgentOpenai", "AI Agent")):
            editor.open(workflow)
            editor.execute()
            expect(editor.failed(step)).to_be_visible(timeout=60_000)
            editor.open_node(step)
            expect(editor.node_error().filter(has_text=expected).first).to_contain_text(hint)
            editor.close_node()

        # The AI Agent's chat: n8n answers "Error in workflow", and the logs beside the chat say why.
        editor.open("roleAgentChat")
        box = editor.open_chat()
        box.fill("Hello?")
        box.press("Enter")
        logs = editor.page.locator('[data-test-id="logs-panel"] [data-test-id="node-error-message"]')
        expect(logs).to_contain_text(expected, timeout=60_000)
        expect(logs).to_contain_text(hint)
    assert e2e_stack.ollama.requests == []  # nothing got through while it was stopped
