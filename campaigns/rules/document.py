"""The whole of rules.yaml: its four sections, and lookups over them."""

from __future__ import annotations

import hashlib

from pydantic import Field, PrivateAttr

from campaigns.errors import RulesError, UnknownCampaign
from campaigns.rules.campaign import Campaign
from campaigns.rules.defaults import Defaults
from campaigns.rules.locating import located_error
from campaigns.rules.surveys import Question
from campaigns.rules.values import Strict
from campaigns.rules.webhooks import Webhook
from campaigns.rules.yamlsource import Located


class Rules(Strict):
    defaults: Defaults = Defaults()
    campaigns: tuple[Campaign, ...] = ()
    surveys: dict[str, tuple[Question, ...]] = Field(default_factory=dict)
    webhooks: tuple[Webhook, ...] = ()

    _source: Located | None = PrivateAttr(default=None)
    _file: str = PrivateAttr(default="rules.yaml")

    def error_at(self, path: tuple[str | int, ...], message: str) -> RulesError:
        """A RulesError pointing at ``path`` in the file these rules came from."""
        return located_error(self._source or Located(data=None), self._file, path, message)

    def campaign(self, campaign_id: str) -> Campaign:
        for campaign in self.campaigns:
            if campaign.id == campaign_id:
                return campaign
        raise UnknownCampaign(campaign_id, [c.id for c in self.campaigns])

    def by_priority(self) -> list[Campaign]:
        """Highest priority first; file order breaks ties."""
        return sorted((c for c in self.campaigns if c.enabled), key=lambda c: -c.priority)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]
