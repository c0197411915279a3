"""`tunesmith serve` arguments (no server imports, so `tunesmith --help` works without the extra)."""


def add_serve_args(p) -> None:
    p.add_argument("--model", default="default", help="base model (default: the embedded one)")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="serve an adapter, classifier run or reward run as model NAME (repeatable)",
    )
    p.add_argument(
        "--adapter-dir",
        help="allow POST /v1/load_lora_adapter for directories under this one (off without it)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require Authorization: Bearer KEY on every API request")
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "int8", "int4"],
        default="auto",
        help="weights: auto (bfloat16 on CPUs with native bf16, else float32), float32, bfloat16, "
        "int8 (linear weights int8 per output row, weight-only) or int4 (the blocks' linear "
        "weights in groups of 32 with step and minimum, the embedded file's own Q4_1 layout)",
    )
    p.add_argument(
        "--compile",
        choices=["auto", "off"],
        default="auto",
        help="auto: compile the base model's decode step in the background (torch.compile, "
        "needs a C++ compiler) and use it once it is ready and checked; off: eager only",
    )
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together at most")
