"""How a conversation becomes text: Coati's "Human: ... Assistant: ..." layout."""

from __future__ import annotations

from dataclasses import dataclass

HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("assistant", "gpt", "bot")


@dataclass(frozen=True)
class ChatTemplate:
    human_prefix: str = "Human: "
    assistant_prefix: str = "\nAssistant: "
    turn_separator: str = "\n"

    def human_turn(self, content: str, first: bool) -> str:
        return ("" if first else self.turn_separator) + self.human_prefix + content

    def render_prompt(self, prompt: str) -> str:
        """A single-turn prompt ready for generation: ends with the assistant prefix."""
        return self.human_turn(prompt, first=True) + self.assistant_prefix

    def render_conversation(self, messages: list[dict]) -> str:
        parts = []
        for i, m in enumerate(messages):
            if m["from"] in HUMAN_ROLES:
                parts.append(self.human_turn(m["content"], first=i == 0))
            else:
                parts.append(self.assistant_prefix + m["content"])
        return "".join(parts)


DEFAULT_TEMPLATE = ChatTemplate()
