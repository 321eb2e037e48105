"""Deterministic generators of the e-commerce text data: intent queries, a product catalogue, catalogue queries.

Why generated and checked in: the golden sets are the inputs of verification and of live quality
probes, so they must be identical on every machine and reviewable in git; the generator documents
how they were made. The intent TRAINING data comes from the same templates with another seed (and
never from the golden file), so the golden accuracy is a held-out figure, not a memorised one.

Regenerate the checked-in files with `python -m builders.golden_data` (the output must not change).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from builders.errors import SourceError

Row = TypeVar("Row")

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
INTENTS_CSV = "queries_intents.csv"
CATALOGUE_CSV = "catalogue.csv"
CATALOGUE_QUERIES_CSV = "catalogue_queries.csv"

GOLDEN_SEED = 20261124
TRAINING_SEED = 7

INTENTS: tuple[str, ...] = (
    "product_search",
    "order_status",
    "returns",
    "price_compare",
    "store_locator",
    "customer_support",
    "shipping_info",
    "account_help",
)

_PRODUCTS = (
    "running shoes",
    "hiking boots",
    "rain jacket",
    "wireless headphones",
    "bluetooth speaker",
    "laptop",
    "gaming mouse",
    "mechanical keyboard",
    "coffee maker",
    "blender",
    "air fryer",
    "desk lamp",
    "office chair",
    "yoga mat",
    "backpack",
    "winter coat",
    "sunglasses",
    "smart watch",
    "phone case",
    "usb charger",
    "tv stand",
    "bed sheets",
    "frying pan",
    "water bottle",
    "kids bike",
    "tent",
    "sleeping bag",
    "jeans",
)
_ADJECTIVES = ("cheap", "red", "black", "waterproof", "lightweight", "large", "small", "organic", "wireless", "blue")
_BRANDS = ("acme", "northpeak", "volta", "brightline", "kestrel", "urbanfox", "solara", "tidewater")
_CITIES = ("berlin", "austin", "leeds", "lyon", "denver", "porto", "oslo", "dublin", "seattle", "milan")
_STORES = ("downtown store", "mall branch", "outlet", "flagship store", "shop near the station")
_CARRIERS = ("dhl", "ups", "fedex", "the courier", "royal mail")

# Many templates share words across intents ("order", "help", "price", "delivery") and a few are
# listed under two intents, as real queries are ambiguous: learnable, but no classifier gets 100 %.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "product_search": (
        "{adj} {product}",
        "{brand} {product}",
        "show me {adj} {product}",
        "looking for a {product} by {brand}",
        "do you sell {product}",
        "{product} for kids",
        "best {product} under {price} dollars",
        "i want to buy {adj} {product}",
        "new {brand} {product} in stock",
        "{brand} {product} price",
    ),
    "order_status": (
        "where is my order {order}",
        "track order {order}",
        "has my {product} shipped yet",
        "order {order} status",
        "when will my order arrive",
        "my {product} order is late",
        "i ordered a {product} last week where is it",
        "is order {order} on its way",
        "help with order {order}",
        "delivery of my {product}",
    ),
    "returns": (
        "return my {product}",
        "how do i return a {product}",
        "refund for order {order}",
        "the {product} is broken i want a refund",
        "can i exchange my {product} for a {adj} one",
        "return label for order {order}",
        "send back {brand} {product}",
        "{product} does not fit can i return it",
    ),
    "price_compare": (
        "is the {brand} {product} cheaper elsewhere",
        "compare price of {product}",
        "price match {product} from {brand}",
        "{brand} vs {brand2} {product} price",
        "cheapest {product} price comparison",
        "why is the {product} more expensive than online",
        "do you match competitor prices on {product}",
        "price history of {brand} {product}",
        "{brand} {product} price",
    ),
    "store_locator": (
        "store near me",
        "stores in {city}",
        "opening hours of the {store} in {city}",
        "is the {store} open on sunday",
        "directions to your {store}",
        "nearest shop in {city}",
        "closest store that has {product}",
        "address of the {city} {store}",
    ),
    "customer_support": (
        "talk to a human",
        "i need help with my {product}",
        "contact customer service",
        "speak to an agent about order {order}",
        "my {product} stopped working who can help",
        "complaint about the {store}",
        "support phone number",
        "live chat please",
        "help with order {order}",
    ),
    "shipping_info": (
        "how much is delivery to {city}",
        "do you ship to {city}",
        "shipping cost for a {product}",
        "is express delivery available",
        "which carrier do you use {carrier} or {carrier2}",
        "free shipping on orders over {price}",
        "how long does delivery take to {city}",
        "international shipping options",
        "delivery of my {product}",
        "change my delivery address",
    ),
    "account_help": (
        "reset my password",
        "i cannot log in",
        "change the email on my account",
        "delete my account",
        "update my delivery address in my account",
        "how do i change my password",
        "my account is locked",
        "add a payment card to my account",
        "change my delivery address",
    ),
}


def _fill(template: str, rng: random.Random) -> str:
    brand, brand2 = rng.sample(_BRANDS, 2)
    carrier, carrier2 = rng.sample(_CARRIERS, 2)
    values = {
        "product": rng.choice(_PRODUCTS),
        "adj": rng.choice(_ADJECTIVES),
        "brand": brand,
        "brand2": brand2,
        "city": rng.choice(_CITIES),
        "store": rng.choice(_STORES),
        "carrier": carrier,
        "carrier2": carrier2,
        "order": str(rng.randint(100000, 999999)),
        "price": str(rng.choice((20, 50, 100, 200, 500))),
    }
    text = template.format(**values)
    return _noise(text, rng)


def _noise(text: str, rng: random.Random) -> str:
    """Typos and dropped words, as users type: about one query in four gets one."""
    words = text.split()
    roll = rng.random()
    if roll < 0.12 and len(words) > 2:
        del words[rng.randrange(len(words))]
    elif roll < 0.25:
        index = rng.randrange(len(words))
        word = words[index]
        if len(word) > 3:
            cut = rng.randrange(1, len(word) - 1)
            words[index] = word[:cut] + word[cut + 1 :]
    return " ".join(words)


def intent_queries(per_intent: int, seed: int) -> list[tuple[str, str]]:
    """`per_intent` (query, intent) rows for every intent, shuffled; the same seed gives the same rows."""
    rng = random.Random(seed)
    rows = [(_fill(rng.choice(_TEMPLATES[intent]), rng), intent) for intent in INTENTS for _ in range(per_intent)]
    rng.shuffle(rows)
    return rows


# -- product catalogue -------------------------------------------------------------------------
_CATEGORIES: dict[str, tuple[str, ...]] = {
    # category in titles -> words shoppers use for it in queries
    "running shoes": ("running shoes", "trainers", "sneakers for running"),
    "hiking boots": ("hiking boots", "trail boots", "walking boots"),
    "rain jacket": ("rain jacket", "waterproof jacket", "raincoat"),
    "headphones": ("headphones", "headset", "earphones"),
    "backpack": ("backpack", "rucksack", "daypack"),
    "t-shirt": ("t-shirt", "tee", "shirt"),
    "jeans": ("jeans", "denim trousers", "denim pants"),
    "water bottle": ("water bottle", "drinking bottle", "flask"),
    "yoga mat": ("yoga mat", "exercise mat", "fitness mat"),
    "sunglasses": ("sunglasses", "sun glasses", "shades"),
    "watch": ("watch", "wristwatch", "timepiece"),
    "desk lamp": ("desk lamp", "table lamp", "reading light"),
}
_COLOURS = ("black", "white", "red", "blue", "green", "grey", "brown", "yellow")
_AUDIENCES = {"men's": "for men", "women's": "for women", "kids'": "for kids"}
_MATERIALS = ("cotton", "recycled", "leather", "lightweight", "classic", "premium")


@dataclass(frozen=True)
class Product:
    product_id: str
    title: str
    brand: str
    category: str
    colour: str
    audience: str


def catalogue(count: int, seed: int) -> list[Product]:
    """`count` distinct products (brand, audience, category, colour), titled as a shop would."""
    rng = random.Random(seed)
    seen: set[tuple[str, str, str, str]] = set()
    products: list[Product] = []
    while len(products) < count:
        key = (rng.choice(_BRANDS), rng.choice(tuple(_AUDIENCES)), rng.choice(tuple(_CATEGORIES)), rng.choice(_COLOURS))
        if key in seen:
            continue
        seen.add(key)
        brand, audience, category, colour = key
        title = f"{brand.title()} {audience} {rng.choice(_MATERIALS)} {category}, {colour}"
        products.append(Product(f"P{len(products) + 1:04d}", title, brand, category, colour, audience))
    return products


def catalogue_queries(products: list[Product], count: int, seed: int) -> list[tuple[str, list[str]]]:
    """Queries written as shoppers write them (synonyms, other word order) with every product they fit.

    A query names category and colour, sometimes the audience and sometimes the brand; the relevant
    products are exactly those that match every attribute the query names.
    """
    rng = random.Random(seed)
    rows: list[tuple[str, list[str]]] = []
    used: set[str] = set()
    while len(rows) < count:
        target = rng.choice(products)
        word = rng.choice(_CATEGORIES[target.category])
        with_audience = rng.random() < 0.7
        with_brand = rng.random() < 0.4
        parts = [target.colour, word]
        if with_audience:
            parts.append(_AUDIENCES[target.audience])
        if with_brand:
            parts = [target.brand, *parts] if rng.random() < 0.5 else [*parts, "from", target.brand]
        query = " ".join(parts)
        if query in used:
            continue
        used.add(query)
        relevant = [
            p.product_id
            for p in products
            if p.category == target.category
            and p.colour == target.colour
            and (not with_audience or p.audience == target.audience)
            and (not with_brand or p.brand == target.brand)
        ]
        rows.append((query, relevant))
    return rows


def write_golden(folder: Path = GOLDEN_DIR) -> list[Path]:
    """Write the three golden CSV files into `folder` and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    intents_path = folder / INTENTS_CSV
    with open(intents_path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["query", "intent"])
        writer.writerows(intent_queries(per_intent=50, seed=GOLDEN_SEED))
    products = catalogue(300, seed=GOLDEN_SEED)
    catalogue_path = folder / CATALOGUE_CSV
    with open(catalogue_path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["product_id", "title"])
        writer.writerows((p.product_id, p.title) for p in products)
    queries_path = folder / CATALOGUE_QUERIES_CSV
    with open(queries_path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["query", "relevant_ids"])
        writer.writerows((q, " ".join(ids)) for q, ids in catalogue_queries(products, 200, seed=GOLDEN_SEED + 1))
    return [intents_path, catalogue_path, queries_path]


def _read_rows(path: Path, row: Callable[[dict[str, str]], Row]) -> list[Row]:
    """Every row of a golden CSV; a missing, unreadable or malformed file is a SourceError naming it."""
    try:
        with open(path, newline="") as handle:
            return [row(values) for values in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"golden set {path} cannot be read: {exc}") from exc
    except (KeyError, AttributeError) as exc:  # a column missing, or a short row (None for its value)
        raise SourceError(f"golden set {path} lacks column or value {exc}") from exc


def read_intents(folder: Path = GOLDEN_DIR) -> list[tuple[str, str]]:
    return _read_rows(folder / INTENTS_CSV, lambda row: (row["query"], row["intent"]))


def read_catalogue(folder: Path = GOLDEN_DIR) -> list[tuple[str, str]]:
    return _read_rows(folder / CATALOGUE_CSV, lambda row: (row["product_id"], row["title"]))


def read_catalogue_queries(folder: Path = GOLDEN_DIR) -> list[tuple[str, list[str]]]:
    return _read_rows(folder / CATALOGUE_QUERIES_CSV, lambda row: (row["query"], row["relevant_ids"].split()))


if __name__ == "__main__":
    for written in write_golden():
        print(written)
