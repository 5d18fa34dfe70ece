"""Tasks, benchmarks and task orders.

from aimray.tasks import get_task, benchmark_tasks
data = get_task("trec").load(SplitSizes(), seed=0)
"""

from aimray.tasks.offline import OFFLINE_TASKS
from aimray.tasks.offline_long import LONG_TASKS
from aimray.tasks.registry import (
    BENCHMARKS,
    EXTRA_ORDERS_FROM,
    TASKS,
    Benchmark,
    benchmark_tasks,
    get_benchmark,
    get_task,
    permuted_order,
    register_benchmark,
    register_task,
)
from aimray.tasks.spec import Example, SplitSizes, TaskData, TaskSpec

for _spec in OFFLINE_TASKS + LONG_TASKS:
    register_task(_spec)

# Offline analogue of the paper's Standard CL benchmark: same four roles, same three orders
# (dbpedia=wordnet, amazon=amazon, yahoo=trec, agnews=bbc).
register_benchmark(
    Benchmark(
        "offline-standard",
        {
            1: ("wordnet", "amazon", "trec", "bbc"),
            2: ("wordnet", "amazon", "bbc", "trec"),
            3: ("trec", "amazon", "bbc", "wordnet"),
        },
        needs_data_dir=False,
        about="offline analogue of Standard CL: dbpedia=wordnet, amazon=amazon, yahoo=trec, agnews=bbc",
    )
)
register_benchmark(
    Benchmark(
        "offline-six",
        {1: ("wordnet", "amazon", "trec", "bbc", "sms_spam", "tweet_sentiment")},
        needs_data_dir=False,
        about="all six offline tasks in one sequence",
    )
)
# The paper's benchmarks (docs/method.md, section 6); they need the data in the paper's layout (--data-dir).
register_benchmark(
    Benchmark(
        "standard",
        {
            1: ("dbpedia", "amazon", "yahoo", "agnews"),
            2: ("dbpedia", "amazon", "agnews", "yahoo"),
            3: ("yahoo", "amazon", "agnews", "dbpedia"),
        },
        needs_data_dir=True,
        about="Standard CL benchmark (4 tasks), orders 1-3",
    )
)
LONG_ORDERS = {
    4: (
        "mnli",
        "cb",
        "wic",
        "copa",
        "qqp",
        "boolqa",
        "rte",
        "imdb",
        "yelp",
        "amazon",
        "sst-2",
        "dbpedia",
        "agnews",
        "multirc",
        "yahoo",
    ),
    5: (
        "multirc",
        "boolqa",
        "wic",
        "mnli",
        "cb",
        "copa",
        "qqp",
        "rte",
        "imdb",
        "sst-2",
        "dbpedia",
        "agnews",
        "yelp",
        "amazon",
        "yahoo",
    ),
    6: (
        "yelp",
        "amazon",
        "mnli",
        "cb",
        "copa",
        "qqp",
        "rte",
        "imdb",
        "sst-2",
        "dbpedia",
        "agnews",
        "yahoo",
        "multirc",
        "boolqa",
        "wic",
    ),
}
# Orders beyond the paper's three, for studies that need more (the order is the main source of variance):
# order 100+k is order 4 shuffled by the key "long/<k>", the same sequence on every machine.
RANDOM_ORDERS = range(EXTRA_ORDERS_FROM + 1, EXTRA_ORDERS_FROM + 21)
LONG_ORDERS |= {k: permuted_order(LONG_ORDERS[4], f"long/{k - 100}") for k in RANDOM_ORDERS}
register_benchmark(
    Benchmark(
        "long",
        LONG_ORDERS,
        needs_data_dir=True,
        about="Long sequence benchmark (15 tasks), orders 4-6; orders 101-120: seeded permutations of order 4",
    )
)
# Offline analogue of the Long sequence: each paper task replaced by the offline task in its role
# (aimray/tasks/offline_long.py says which and why), the paper's orders 4-6 kept role for role.
LONG_ROLES = {
    "mnli": "corr2cause",
    "cb": "hedge",
    "wic": "sense",
    "copa": "quartz",
    "qqp": "simlex",
    "boolqa": "socialiqa",
    "rte": "sms_spam",
    "imdb": "afinn",
    "yelp": "tweet_sentiment",
    "amazon": "amazon",
    "sst-2": "sarcasm",
    "dbpedia": "wordnet",
    "agnews": "bbc",
    "multirc": "trec",
    "yahoo": "newsgroups",
}
register_benchmark(
    Benchmark(
        "offline-long",
        {k: tuple(LONG_ROLES[t] for t in order) for k, order in BENCHMARKS["long"].orders.items()},
        needs_data_dir=False,
        about="offline analogue of the Long sequence (15 tasks, orders 4-6; 101-120 as in long): "
        + ", ".join(f"{paper}={ours}" for paper, ours in LONG_ROLES.items()),
    )
)
register_benchmark(
    Benchmark(
        "superni",
        {
            7: (
                "task1572",
                "task363",
                "task1290",
                "task181",
                "task002",
                "task1510",
                "task639",
                "task1729",
                "task073",
                "task1590",
                "task748",
                "task511",
                "task591",
                "task1687",
                "task875",
            ),
            8: (
                "task748",
                "task073",
                "task1590",
                "task639",
                "task1572",
                "task1687",
                "task591",
                "task363",
                "task1510",
                "task1729",
                "task181",
                "task511",
                "task002",
                "task1290",
                "task875",
            ),
        },
        needs_data_dir=True,
        about="SuperNI benchmark (15 generation tasks, ROUGE-L), orders 7-8",
    )
)

__all__ = [
    "BENCHMARKS",
    "EXTRA_ORDERS_FROM",
    "TASKS",
    "Benchmark",
    "Example",
    "SplitSizes",
    "TaskData",
    "TaskSpec",
    "benchmark_tasks",
    "get_benchmark",
    "get_task",
    "register_benchmark",
    "register_task",
]
