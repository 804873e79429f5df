"""The asyncio agent behind `manage.py run_agent` (see `agent.py` for the shape of the work)."""

from __future__ import annotations

from .agent import Agent, ConversationSession, ReplyRun
from .config import AgentConfig, ConfigError

__all__ = ["Agent", "AgentConfig", "ConfigError", "ConversationSession", "ReplyRun"]
