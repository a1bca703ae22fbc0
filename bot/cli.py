"""`perimeter` — the command line. Thin: parse, call one service, render.

Exit codes: 0 ok, 1 evaluation below its threshold, 2 bad input or configuration,
3 a backend is unavailable (retry later).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.composition import Container
from bot.settings import load_settings
from rag.answer import AnswerResult
from rag.errors import AppError, BackendUnavailable, ConfigError
from rag.indexer import IndexSummary
from rag.pipeline import AnswerRequest
from rag.prompts import Turn

app = typer.Typer(help="Perimeter: answers from your own documents with a local model.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
out = Console()
err = Console(stderr=True)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _exit_code(exc: AppError) -> int:
    return 3 if isinstance(exc, BackendUnavailable) else 2


@contextmanager
def _container(**overrides: Any) -> Iterator[Container]:
    settings = load_settings(**overrides)
    logging.getLogger().setLevel(settings.log_level)  # PERIMETER_LOG_LEVEL
    container = Container(settings)
    try:
        yield container
    finally:
        container.close()


def _run(fn: Callable[[], None]) -> None:
    """The CLI's one error edge: AppError → a readable message and an exit code."""
    try:
        fn()
    except AppError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(_exit_code(exc)) from None


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int, str], None]]:
    if not enabled:
        yield lambda *_: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("[dim]{task.fields[item]}"))
    with Progress(*columns, console=err, transient=False) as bar:
        tasks: dict[str, Any] = {}
        labels = {"scan": "Reading files", "embed": "Embedding chunks", "ask": "Asking", "index": "Embedding"}

        def report(phase: str, done: int, total: int, item: str = "") -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(labels.get(phase, phase), total=total, item="")
            bar.update(tasks[phase], completed=done, total=total, item=item[-50:])

        yield report


def _print_summary(s: IndexSummary) -> None:
    table = Table(title=f"Index {s.collection} · version {s.index_version}", show_header=True)
    table.add_column("result")
    table.add_column("files", justify="right")
    table.add_row("added", str(len(s.added)))
    table.add_row("changed", str(len(s.changed)))
    table.add_row("deleted", str(len(s.deleted)))
    table.add_row("unchanged", str(s.unchanged))
    table.add_row("skipped", str(len(s.skipped)), style="yellow" if s.skipped else None)
    table.add_row("not a document format", str(s.ignored), style="dim")
    out.print(table)
    out.print(f"chunks: {s.chunks_embedded} embedded, {s.chunks_reused} reused, {s.chunks_total} in the index · "
              f"{s.duration_s:.1f} s")
    if s.switched_from:
        out.print(f"switched from {', '.join(s.switched_from)} (new embedding model) — old collection removed")
    for file, reason in s.skipped:
        out.print(f"  [yellow]skipped[/yellow] {escape(file)}: {escape(reason)}")


def _do_index(container: Container, paths: list[Path], as_json: bool, show_progress: bool) -> IndexSummary:
    with _progress(show_progress and not as_json) as report:
        summary = container.indexer.index(paths, progress=report)
    container.purge_stale_answers()
    if as_json:
        print(json.dumps(summary.to_json(), ensure_ascii=False, indent=2))
    else:
        _print_summary(summary)
    return summary


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders with documents", exists=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars")] = True,
) -> None:
    """Index folders incrementally: only new and changed files are embedded."""

    def go() -> None:
        with _container() as c:
            _do_index(c, paths, as_json, progress)

    _run(go)


def _render(result: AnswerResult) -> None:
    style = "yellow" if result.escalate or result.mode != "generated" else "green"
    label = {"generated": "answer", "extractive": "extractive answer (no model)", "cached": "answer (from cache)",
             "none": "escalate to an operator"}[result.mode]
    out.print(f"[bold {style}]{label}[/bold {style}]")
    out.print(escape(result.text))
    if result.sources:
        out.print("[bold]sources[/bold]")
        for s in result.sources:
            where = f" — {s.heading}" if s.heading else ""
            link = f" <{s.url}>" if s.url else ""
            out.print(f"  [{s.n}] {escape(s.title)}{escape(where)} [dim]({escape(s.source_id)}){escape(link)}[/dim]")
    facts = [f"confidence {result.confidence:.2f}"]
    if result.escalate:
        facts.append(f"escalate: {result.reason}")
    if result.degraded:
        facts.append(f"degraded: {result.degraded}")
    timing = " ".join(f"{k} {v * 1000:.0f}ms" for k, v in result.timings.items())
    out.print(f"[dim]{' · '.join(facts)}\n{timing}[/dim]")
    if result.usage:
        u = result.usage
        out.print(f"[dim]{u.backend}:{u.model} tokens {u.prompt_tokens}+{u.completion_tokens}[/dim]")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question")],
    operator: Annotated[bool, typer.Option(help="Ask as an operator (operator-only documents too)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Answer one question with sources, confidence and timings."""

    def go() -> None:
        with _container() as c:
            if not as_json:
                err.print(f"[dim]model: {c.model_choice.description}[/dim]")
            request = AnswerRequest(question, audience="operator" if operator else "customer")

            async def answer() -> AnswerResult:
                try:
                    if as_json or not err.is_terminal:
                        return await c.pipeline.answer(request)
                    with err.status("searching the knowledge base and asking the model…"):
                        return await c.pipeline.answer(request)
                finally:
                    await c.aclose()

            result = asyncio.run(answer())
            if as_json:
                print(json.dumps(result.to_json(), ensure_ascii=False, indent=2))
            else:
                _render(result)

    _run(go)


def _chat_loop(c: Container, operator: bool) -> None:
    async def run() -> None:
        try:
            await _chat(c, operator)
        finally:
            await c.aclose()

    asyncio.run(run())


async def _chat(c: Container, operator: bool) -> None:
    out.print(f"[bold]Perimeter chat[/bold] · model: {escape(c.model_choice.description)}")
    out.print("[dim]Ask in Russian or English. Empty line or Ctrl-D to quit; /new forgets the history.[/dim]")
    history: list[Turn] = []
    while True:
        try:
            line = await asyncio.to_thread(input, "\n> ")
        except (EOFError, KeyboardInterrupt):
            return
        if not line.strip():
            return
        if line.strip() == "/new":
            history.clear()
            continue
        try:
            with err.status("searching the knowledge base and asking the model…"):
                result = await c.pipeline.answer(
                    AnswerRequest(line, history=list(history), audience="operator" if operator else "customer")
                )
        except AppError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            continue
        _render(result)
        history.extend([Turn("user", c.pipeline.prepare_question(line)), Turn("assistant", result.text)])


@app.command()
def chat(
    operator: Annotated[bool, typer.Option(help="Chat as an operator (operator-only documents too)")] = False,
) -> None:
    """An interactive chat in the terminal, with history."""

    def go() -> None:
        with _container() as c:
            c.retriever.active_collection()  # fail now, not at the first question, if nothing is indexed
            _chat_loop(c, operator)

    _run(go)


@app.command()
def demo(
    chat_after: Annotated[bool, typer.Option("--chat/--no-chat", help="Open the terminal chat")] = True,
    web: Annotated[bool, typer.Option("--web/--no-web", help="Start the web app with the CRM widget")] = True,
    port: Annotated[int | None, typer.Option(help="Web port (default: PERIMETER_HTTP_PORT, or a free one)")] = None,
) -> None:
    """The sample bank: index its documents, open the CRM widget on a sample customer, chat."""

    def go() -> None:
        kb = EXAMPLES / "kb"
        if not kb.is_dir():
            raise AppError(f"the sample knowledge base is missing at {kb}")
        # The demo always uses the demo CRM, whatever the environment configures.
        with _container(crm={"backend": "demo"}) as c:
            out.print(f"[bold]Perimeter demo[/bold] · data in {c.settings.data_dir.resolve()}")
            out.print(f"model: {escape(c.model_choice.description)}")
            out.print("vector store: " + (c.settings.qdrant.url or f"embedded Qdrant at {c.settings.qdrant_path}"))
            out.print(f"embedder: {c.embedder.model_id}")
            out.print(f"crm: {escape(c.crm.description)}")
            _do_index(c, [kb], False, True)
            asyncio.run(_demo(c, chat=chat_after and sys.stdin.isatty(), web=web, port=port))
            if chat_after and not sys.stdin.isatty():
                out.print("[dim]stdin is not a terminal: no chat. Run `perimeter chat` yourself.[/dim]")

    _run(go)


async def _demo(c: Container, *, chat: bool, web: bool, port: int | None) -> None:
    import uvicorn

    from bot.demo import demo_link, seed_demo_conversation
    from bot.web.app import create_app

    try:
        with err.status("the sample customer Марина Иванова asks the bot…"):
            await seed_demo_conversation(c)
        server = None
        if web:
            host = c.settings.http.host
            bind = port or _free_port(host, c.settings.http.port)
            server = uvicorn.Server(uvicorn.Config(create_app(webhook=None, routers=c.web_routers(),
                                                              readiness=c.readiness, metrics=c.metrics), host=host,
                                                   port=bind, log_level="warning", access_log=False))
            serving = asyncio.create_task(server.serve())
            while not server.started and not serving.done():  # noqa: ASYNC110 - uvicorn has no "started" event
                await asyncio.sleep(0.05)
            if serving.done():
                serving.result()  # a bind failure: show it
            out.print("\n[bold]The CRM widget[/bold] on the sample customer (open it in a browser):")
            out.print(f"  {demo_link(c, f'http://{host}:{bind}')}", soft_wrap=True)
            out.print(f"[dim]API docs: http://{host}:{bind}/docs · health: http://{host}:{bind}/healthz[/dim]")
        out.print("Try: «скок стоит обслуживание карты», «карту сперли что делать», "
                  "\"can I get a mortgage if I'm not a Russian citizen\", «какая погода завтра в Архангельске»")
        if chat:
            await _chat(c, operator=False)
        elif server is not None:
            out.print("[dim]Ctrl-C stops the web app.[/dim]")
            await serving
        if server is not None:
            server.should_exit = True
            await serving
    finally:
        await c.aclose()


def _free_port(host: str, preferred: int) -> int:
    """The configured port if it is free, else any free one (the demo must start on a busy machine)."""
    import socket

    for candidate in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind((host, candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise AppError(f"no free port on {host}")


@app.command("eval")
def evaluate(
    dataset: Annotated[Path, typer.Argument(help="JSONL eval set, or XQuAD / XQuAD-R JSON")],
    no_llm: Annotated[bool, typer.Option("--no-llm", help="Measure retrieval only")] = False,
    report: Annotated[Path | None, typer.Option(help="Write the figures as JSON to this file")] = None,
    min_recall5: Annotated[float | None, typer.Option("--min-recall5", help="Exit 1 below this recall@5")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N questions")] = None,
    mode: Annotated[str, typer.Option(help="hybrid | dense | sparse")] = "hybrid",
    fusion: Annotated[str | None, typer.Option(help="rrf | dbsf (default: PERIMETER_RAG_FUSION)")] = None,
    show_misses: Annotated[bool, typer.Option(help="List the questions whose gold was not in the top 5")] = False,
) -> None:
    """Recall@1, recall@5, MRR@10 of the gold sources; escalation and answer F1 with a model."""
    from rag.eval.datasets import load_dataset
    from rag.eval.harness import candidate_index, eval_retriever, run_eval
    from rag.pipeline import AnswerPipeline

    if mode not in ("hybrid", "dense", "sparse") or (fusion and fusion not in ("rrf", "dbsf")):
        err.print("[red]error:[/red] --mode is hybrid|dense|sparse, --fusion is rrf|dbsf")
        raise typer.Exit(2)

    def go() -> None:
        evalset = load_dataset(dataset, limit=limit)
        with _container() as c:
            fuse = fusion or c.settings.rag.fusion
            client = None
            if evalset.candidates is not None:
                with _progress(True) as bar:
                    client, record = candidate_index(
                        evalset, embedder=c.embedder, data_dir=c.settings.data_dir,
                        progress=lambda p, d, t: bar(p, d, t, ""),
                    )
                retriever = eval_retriever(client, record, c.embedder, fusion=fuse,  # type: ignore[arg-type]
                                           prefetch_k=c.settings.rag.prefetch_k)
            else:
                retriever = c.retriever
                if fusion:
                    retriever = eval_retriever(c.qdrant, retriever.active_collection(), c.embedder,
                                               fusion=fuse, prefetch_k=c.settings.rag.prefetch_k)  # type: ignore[arg-type]
            pipeline = None
            if not no_llm:
                choice = c.model_choice
                err.print(f"[dim]model: {choice.description}[/dim]")
                # Evaluation measures the pipeline, not the cache.
                pipeline = AnswerPipeline(retriever, choice.model, c.pipeline_config(), cache=None,
                                          no_model_reason=choice.description)

            async def run() -> Any:
                try:
                    with _progress(True) as bar:
                        return await run_eval(evalset, retriever, pipeline=pipeline, mode=mode,  # type: ignore[arg-type]
                                              progress=lambda p, d, t: bar(p, d, t, ""))
                finally:
                    await c.aclose()

            try:
                result = asyncio.run(run())
            finally:
                if client is not None:
                    client.close()
        figures = result.report.to_json()
        _print_eval(figures)
        if show_misses:
            from rag.redaction import mask_pii  # evaluation output never holds raw personal data

            for o in result.outcomes:
                if o.golds and (o.rank is None or o.rank > 5):
                    out.print(f"[yellow]miss[/yellow] {escape(mask_pii(o.question))} → gold {o.golds}, "
                              f"got {o.ranked[:3]}")
                if o.expected_escalate and pipeline is not None and not o.escalated:
                    out.print(f"[yellow]not escalated[/yellow] {escape(mask_pii(o.question))}")
        if report:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(figures, ensure_ascii=False, indent=2))
        if min_recall5 is not None and not figures["recall@5"] >= min_recall5:  # NaN fails too
            err.print(f"[red]recall@5 {figures['recall@5']:.3f} is below {min_recall5}[/red]")
            raise typer.Exit(1)

    _run(go)


def _print_eval(figures: dict[str, Any]) -> None:
    table = Table(title=f"Evaluation: {figures.get('dataset')} ({figures.get('mode')})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("n", "recall@1", "recall@5", "mrr@10", "unanswerable", "unanswerable_escalated",
                "answerable_escalated", "answer_f1"):
        if key in figures:
            v = figures[key]
            table.add_row(key, f"{v:.3f}" if isinstance(v, float) else str(v))
    for stage, ps in figures.get("latency_s", {}).items():
        table.add_row(f"{stage} p50 / p95", f"{ps['p50'] * 1000:.1f} / {ps['p95'] * 1000:.1f} ms")
    out.print(table)


def _print_service_banner(c: Container, *, listening: str | None, ingress: str) -> None:
    s = c.settings
    tg = s.telegram
    out.print("[bold]Perimeter service[/bold]")
    if listening:
        out.print(f"  http:          {listening}  (health: {listening}/healthz)")
    out.print(f"  telegram:      {ingress} · Bot API {tg.api_url}")
    out.print(f"  model:         {escape(c.model_choice.description)}")
    out.print(f"  crm:           {escape(c.crm.description)}")
    out.print("  vector store:  " + (s.qdrant.url or f"embedded Qdrant at {s.qdrant_path}"))
    out.print(f"  database:      {_redacted(s.database_url)}")
    desk = c.tickets.desk
    if desk.chat_id:
        where = f"chat {desk.chat_id}" + (f", topic {desk.topic_id}" if desk.topic_id else "")
    elif desk.operator_ids:
        where = "each operator's private chat"
    else:
        where = "[yellow]nowhere: set PERIMETER_TELEGRAM_OPERATOR_IDS[/yellow]"
    out.print(f"  tickets go to: {where} · {len(desk.operator_ids)} operator(s)")


def _redacted(url: str) -> str:
    """A database URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default: PERIMETER_HTTP_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default: PERIMETER_HTTP_PORT)")] = None,
) -> None:
    """Run the service: the HTTP app, the Telegram webhook (or polling when no webhook URL is
    configured), the update worker and the outbox."""
    import uvicorn

    from bot.service import ServiceRuntime
    from bot.web.app import create_app

    def go() -> None:
        with _container() as c:
            ingress = c.webhook_ingress() if c.telegram_enabled else None
            runtime = ServiceRuntime(c, "webhook" if ingress else "polling")
            bind_host, bind_port = host or c.settings.http.host, port or c.settings.http.port
            app_ = create_app(webhook=ingress, on_shutdown=runtime.stop, routers=c.web_routers(),
                              readiness=c.readiness, metrics=c.metrics)
            server = uvicorn.Server(uvicorn.Config(app_, host=bind_host, port=bind_port, log_level="warning",
                                                   access_log=False, lifespan="on"))

            async def main() -> None:
                await runtime.start()
                mode = (f"webhook {c.settings.telegram.webhook_url} -> POST /telegram/webhook" if ingress
                        else "polling getUpdates" if c.telegram_enabled else "off (PERIMETER_TELEGRAM_TOKEN unset)")
                _print_service_banner(c, listening=f"http://{bind_host}:{bind_port}", ingress=mode)
                if runtime.bot_username:
                    out.print(f"  bot:           @{runtime.bot_username}")
                try:
                    await server.serve()  # its shutdown stops the runtime (see create_app)
                finally:
                    await runtime.stop()  # a no-op when the shutdown already did it

            asyncio.run(main())

    _run(go)


@app.command("bot")
def run_bot() -> None:
    """Development mode: the Telegram bot by polling, no HTTP server."""
    import signal

    from bot.service import ServiceRuntime

    def go() -> None:
        with _container() as c:
            if not c.telegram_enabled:
                raise ConfigError("PERIMETER_TELEGRAM_TOKEN: set the bot token from @BotFather")
            runtime = ServiceRuntime(c, "polling")

            async def main() -> None:
                await runtime.start()
                loop = asyncio.get_running_loop()
                stopped = asyncio.Event()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stopped.set)
                try:
                    _print_service_banner(c, listening=None, ingress="polling getUpdates")
                    if runtime.bot_username:
                        out.print(f"  bot:           @{runtime.bot_username} · Ctrl-C to stop")
                    await stopped.wait()
                finally:
                    await runtime.stop()

            asyncio.run(main())

    _run(go)


@app.command()
def report(
    since: Annotated[str, typer.Option(help="How far back from now: 30m, 24h, 7d, 2w")] = "7d",
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here")] = None,
    html_file: Annotated[Path | None, typer.Option("--html", help="Also write it as one HTML page here")] = None,
) -> None:
    """Questions, latency, escalations, feedback and the GPU's cost against a cloud API, for the
    people who pay for it: tables here, JSON and a self-contained HTML page on request."""
    from datetime import UTC, datetime

    from bot.reports import compute_report, parse_since, render_html, render_table
    from rag.errors import InputError

    def go() -> None:
        span = parse_since(since)  # a bad --since fails before anything is opened
        until = datetime.now(UTC)
        with _container() as c:
            result = c.db.tx_sync(lambda conn: compute_report(conn, since=until - span, until=until,
                                                              cost=c.settings.cost))
        out.print(render_table(result))
        for path, text in ((json_file, lambda: json.dumps(result.to_json(), ensure_ascii=False, indent=2)),
                           (html_file, lambda: render_html(result))):
            if path is None:
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text(), encoding="utf-8")
            except OSError as exc:
                raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
            out.print(f"wrote {escape(str(path.resolve()))}", soft_wrap=True)

    _run(go)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema to the head revision."""
    from bot.storage.database import upgrade

    def go() -> None:
        upgrade(load_settings().database_url)
        out.print("database is at the head revision")

    _run(go)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rag.redaction import KNOWN_VALUES, PiiLogFilter

    # Logs never hold raw personal data: phones, e-mails, cards, INN/SNILS, passports, and the
    # current customer's name are masked in every record, exceptions included.
    for handler in logging.getLogger().handlers:
        handler.addFilter(PiiLogFilter(known_values=KNOWN_VALUES.get))
    # httpx logs full request URLs at INFO: a Bitrix24 webhook URL is a credential and CRM search
    # URLs carry phones.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app()


if __name__ == "__main__":
    main()
