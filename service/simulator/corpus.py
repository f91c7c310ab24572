"""A bundled sample workload whose true labels only the simulator knows."""

from __future__ import annotations

import hashlib
import html
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

LABEL_SETS: dict[str, list[str]] = {
    "sentiment": ["positive", "negative", "neutral"],
    "support_intent": ["billing", "technical", "account", "shipping", "other"],
    "moderation": ["ok", "spam", "abuse"],
}

TASK_INSTRUCTIONS: dict[str, str] = {
    "sentiment": "Classify the overall sentiment of this product review as positive, negative or neutral.",
    "support_intent": (
        "Classify this customer support ticket by what the customer needs: billing, technical, account, "
        "shipping or other."
    ),
    "moderation": "Classify this forum comment as ok, spam or abuse.",
}


@dataclass(frozen=True)
class Sample:
    text: str
    task: str
    truth: str


# Texts avoid "&", "<" and ">" so that a service that escapes the text before wrapping it in <text> tags
# still sends something the lookup recognises (html.unescape covers the rest).

_PRODUCTS = [
    "wireless earbuds",
    "standing desk",
    "espresso machine",
    "hiking backpack",
    "robot vacuum",
    "electric kettle",
    "mechanical keyboard",
    "yoga mat",
    "air fryer",
    "phone case",
    "desk lamp",
    "running shoes",
    "winter jacket",
    "blender",
    "smart watch",
    "office chair",
    "rice cooker",
    "bike helmet",
    "camping tent",
    "gaming mouse",
]

_REVIEWS: dict[str, tuple[list[str], list[str]]] = {
    "positive": (
        [
            "The {p} arrived early and it has exceeded every expectation I had: {d}.",
            "Honestly the best {p} I have owned so far, {d}.",
            "Five stars for this {p}. Short version: {d}.",
            "I was skeptical at first, but the {p} turned out to be fantastic and {d}.",
            "Bought the {p} as a gift and my sister keeps thanking me, {d}.",
            "Second {p} I have bought from this brand and I would buy a third, {d}.",
        ],
        [
            "the build quality feels premium",
            "setup took less than five minutes",
            "it is quiet and does exactly what it promises",
            "it was worth every penny",
            "it still looks brand new after months of daily use",
            "customer service answered my one question within an hour",
            "it is far better than the pricier model I returned",
        ],
    ),
    "negative": (
        [
            "The {p} stopped working after two weeks, {d}.",
            "Really disappointed with this {p}: {d}.",
            "One star. I regret buying the {p} because {d}.",
            "Do not waste your money on this {p}, {d}.",
            "I wanted to love the {p}, but {d}.",
            "Returned the {p} within a week, {d}.",
        ],
        [
            "the materials feel cheap and flimsy",
            "it makes a grinding noise nobody at support could explain",
            "half the advertised features simply do not work",
            "the replacement they sent broke the same way",
            "the instructions were useless and a part was missing",
            "it overheats and smells like burning plastic",
            "the battery barely lasts an afternoon",
        ],
    ),
    "neutral": (
        [
            "The {p} does what it says, {d}.",
            "It is an average {p}: {d}.",
            "The {p} arrived on the expected date. So far {d}.",
            "Mixed feelings about the {p}, {d}.",
            "Three stars for the {p}, {d}.",
            "Replaced my old {p} with this one, {d}.",
        ],
        [
            "nothing special and nothing wrong with it",
            "it is decent for the price but not remarkable",
            "some features are handy and others feel unnecessary",
            "I have not used it enough to form a real opinion",
            "it works about as well as any other brand",
            "the color is slightly different from the photos, which I do not mind",
            "it is fine for occasional use",
        ],
    ),
}

_PLANS = ["Pro", "Family", "Business", "Starter", "Premium", "Team"]
_DEVICES = ["Android phone", "iPad", "Windows laptop", "MacBook", "Chromebook", "iPhone"]
_FEATURES = ["photo upload", "calendar sync", "PDF export", "search", "offline mode", "video player"]
_CITIES = ["Denver", "Lisbon", "Toronto", "Manchester", "Austin", "Melbourne"]
_COURIERS = ["UPS", "DHL", "FedEx", "the postal service", "the local courier", "DPD"]

_TICKETS: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for my {plan} subscription this month, please refund the duplicate payment.",
        "Why did my {plan} plan renew at a higher price than last year? Nobody told me about an increase.",
        "Can I get an invoice with my company VAT number for the {plan} plan? Accounting needs it by Friday.",
        "I cancelled the {plan} trial before it ended but my card was still billed, please reverse it.",
        "How do I switch from monthly to annual billing on the {plan} plan without paying twice?",
        "My card expired and now the {plan} payment keeps failing, where do I update the card details?",
    ],
    "technical": [
        "The {feature} keeps crashing on my {device} since the last update.",
        "Every time I open {feature} on my {device} I get a blank white screen.",
        "{Feature} has been stuck at ninety percent for an hour on my {device}, is something broken?",
        "After reinstalling the app on my {device}, {feature} throws error code 503 every time.",
        "The {feature} is extremely slow on my {device}, it takes minutes to respond.",
        "Is {feature} supposed to work on a {device}? Mine just spins forever.",
    ],
    "account": [
        "How do I change the email address on my account? I no longer use the old one. I use a {device}.",
        "I am locked out after too many password attempts and the reset link never arrives, on my {device}.",
        "Please delete my account and all my personal data, I logged in from my {device} for the last time.",
        "I want to add a second user to my {plan} account so my colleague can log in.",
        "Two factor codes stopped working after I replaced my {device}, how do I get back into my account?",
        "Can I merge my two accounts? I accidentally signed up twice, once on my {device}.",
    ],
    "shipping": [
        "My order still shows label created after five days, {courier} has no record of it.",
        "The package was marked delivered by {courier} yesterday but nothing arrived at my door in {city}.",
        "I need to change the delivery address for my order, I am moving to {city} next week.",
        "The box arrived crushed and the item inside is damaged, it came with {courier}.",
        "Do you ship to {city}, and how long does delivery usually take with {courier}?",
        "Tracking for my parcel has not updated in a week, it seems stuck at the {courier} depot.",
    ],
    "other": [
        "Do you have any job openings at your office in {city}?",
        "Just wanted to say the team at your {city} store did a great job helping me last week.",
        "Are you planning to open a store in {city} any time soon?",
        "Could you add a dark mode? My eyes would thank you. Love the product otherwise.",
        "Is your company hosting a booth at the trade fair in {city} this year?",
        "I am a student in {city} writing a report on your company, who can I talk to?",
    ],
}

_TOPICS = [
    "sourdough starters",
    "budget travel in Portugal",
    "fixing a leaky faucet",
    "training for a first marathon",
    "growing tomatoes on a balcony",
    "learning Spanish as an adult",
    "restoring an old bicycle",
    "choosing a first telescope",
    "home composting",
    "saving for a first home",
]
_SPAM_LINKS = [
    "cheap-pills-online.biz",
    "win-big-now.xyz",
    "bit.ly/free-gift-4u",
    "crypto-doubler.io",
    "followers4cheap.net",
    "luxury-replicas.shop",
]

_COMMENTS: dict[str, list[str]] = {
    "ok": [
        "Thanks for the detailed write-up on {topic}, it helped me a lot.",
        "I tried your advice on {topic} and it worked the first time.",
        "Does anyone have a good book recommendation about {topic}?",
        "I disagree a little on {topic}, in my experience the slow approach works better.",
        "Great thread on {topic}, saving this for the weekend.",
        "Quick question about {topic}: how long did it take before you saw results?",
    ],
    "spam": [
        "Forget {topic}, make 5000 dollars a week from home with this one trick at {link}",
        "CONGRATULATIONS you have been selected for a free prize, claim it now at {link} before it expires",
        "Cheap meds, no prescription needed, discreet shipping worldwide, visit {link} today",
        "Buy ten thousand real followers for just 9 dollars at {link}, better than any post on {topic}",
        "Double your bitcoin in 24 hours guaranteed, send any amount and check {link}",
        "Hot singles in your area want to talk about {topic}, sign up free at {link}",
    ],
    "abuse": [
        "Only a complete idiot would believe anything you wrote about {topic}.",
        "Nobody here wants you, take your stupid opinions on {topic} and get lost.",
        "You are pathetic and so is your post about {topic}, just stop posting.",
        "I hope you fail at {topic} like you fail at everything else, loser.",
        "Shut up already, your posts on {topic} are garbage and so are you.",
        "People like you who write about {topic} are worthless morons.",
    ],
}

SAMPLES_PER_LABEL = {"sentiment": 45, "support_intent": 26, "moderation": 36}


def _order(text: str) -> bytes:
    # A fixed, hash-based order (not random.Random) so the corpus is identical on every Python version.
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def _pick(candidates: Iterable[str], count: int) -> list[str]:
    unique = sorted(set(candidates), key=_order)
    if len(unique) < count:
        raise ValueError(f"only {len(unique)} distinct texts, need {count}")
    return unique[:count]


def _sentiment() -> list[Sample]:
    samples: list[Sample] = []
    for label, (templates, details) in _REVIEWS.items():
        texts = (t.format(p=p, d=d) for t, p, d in itertools.product(templates, _PRODUCTS, details))
        samples += [Sample(text, "sentiment", label) for text in _pick(texts, SAMPLES_PER_LABEL["sentiment"])]
    return samples


def _fill(template: str, values: dict[str, Sequence[str]]) -> list[str]:
    slots = [name for name in values if "{" + name + "}" in template or "{" + name.title() + "}" in template]
    texts = []
    for combo in itertools.product(*(values[name] for name in slots)):
        fields = dict(zip(slots, combo, strict=True))
        fields |= {name.title(): value[:1].upper() + value[1:] for name, value in fields.items()}
        texts.append(template.format(**fields))
    return texts


def _support() -> list[Sample]:
    values: dict[str, Sequence[str]] = {
        "plan": _PLANS,
        "device": _DEVICES,
        "feature": _FEATURES,
        "city": _CITIES,
        "courier": _COURIERS,
    }
    samples: list[Sample] = []
    for label, templates in _TICKETS.items():
        texts = [text for template in templates for text in _fill(template, values)]
        samples += [Sample(t, "support_intent", label) for t in _pick(texts, SAMPLES_PER_LABEL["support_intent"])]
    return samples


def _moderation() -> list[Sample]:
    values: dict[str, Sequence[str]] = {"topic": _TOPICS, "link": _SPAM_LINKS}
    samples: list[Sample] = []
    for label, templates in _COMMENTS.items():
        texts = [text for template in templates for text in _fill(template, values)]
        samples += [Sample(t, "moderation", label) for t in _pick(texts, SAMPLES_PER_LABEL["moderation"])]
    return samples


SAMPLES: list[Sample] = _sentiment() + _support() + _moderation()

_BY_TEXT: dict[str, Sample] = {sample.text: sample for sample in SAMPLES}
assert len(_BY_TEXT) == len(SAMPLES), "corpus texts must be distinct"


# Test directives ({{sim:...}}, parsed in behaviour.py) are not part of the text for lookup purposes.
DIRECTIVE = re.compile(r"\{\{sim:(.*?)\}\}", re.DOTALL)


def strip_directives(text: str) -> str:
    return DIRECTIVE.sub("", text).strip()


def sample_for(text: str) -> Sample | None:
    key = strip_directives(text)
    return _BY_TEXT.get(key) or _BY_TEXT.get(html.unescape(key))


def truth_for(text: str, labels: Sequence[str]) -> str | None:
    """The hidden true label of a bundled sample, or None for a text the corpus does not hold."""
    sample = sample_for(text)
    if sample is None or sample.truth not in labels:
        return None
    return sample.truth
