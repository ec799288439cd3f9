"""How the tests drive n8n's editor (2.41): its pages and the `data-test-id`s they use."""

from __future__ import annotations

from playwright.sync_api import Locator, Page


class Editor:
    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url

    def open(self, workflow_id: str) -> None:
        self.page.goto(f"{self.base_url}/workflow/{workflow_id}")
        self.page.locator('[data-test-id="canvas-node"]').first.wait_for()
        # The canvas shows before the node types have loaded; the nodes panel needs them.
        self.page.wait_for_load_state("networkidle")

    def new_workflow(self) -> None:
        self.page.goto(f"{self.base_url}/workflow/new")
        self.page.locator('[data-test-id="canvas-add-button"]').wait_for()
        self.page.wait_for_load_state("networkidle")

    def nodes_panel(self) -> Locator:
        return self.page.locator('[data-test-id="node-creator"]')

    def node(self, name: str) -> Locator:
        return self.page.locator(f'[data-test-id="canvas-node"][data-node-name="{name}"]')

    def search_nodes(self, text: str) -> Locator:
        """Type into the open nodes panel; return its node items."""
        self.page.locator('[data-test-id="node-creator-search-bar"]').fill(text)
        return self.page.locator('[data-test-id="node-creator-node-item"]')

    def execute(self) -> None:
        self.page.locator('[data-test-id="execute-workflow-button"]').click()

    def open_node(self, name: str) -> Locator:
        """Open a node's details view; return its output panel."""
        self.node(name).dblclick()
        return self.page.locator('[data-test-id="output-panel"]')

    def close_node(self) -> None:
        self.page.locator('[data-test-id="ndv-close-button"]').click()

    def succeeded(self, name: str) -> Locator:
        """The node's success check mark on the canvas (it appears once the node has run)."""
        return self.node(name).locator('[data-test-id="canvas-node-status-success"]')

    def failed(self, name: str) -> Locator:
        """The node's error mark on the canvas (it appears once the node has failed)."""
        return self.node(name).locator('[data-test-id="canvas-node-status-mark-error"]')

    def node_error(self) -> Locator:
        """The error a node's details view shows in its output panel: its message and description."""
        return self.page.locator('[data-test-id="output-panel"] [data-test-id="node-error-message"], '
                                 '[data-test-id="output-panel"] [data-test-id="node-error-description"]')

    def open_chat(self) -> Locator:
        """Open the workflow's chat; return its message box."""
        self.page.locator('[data-test-id="workflow-chat-button"]').click()
        return self.page.locator('[data-test-id="canvas-chat"] [data-test-id="chat-input"]')
