"""The REPL of ``foundry online``: type text and the model learns it.

Input comes from ``prompt_toolkit`` (line editing, history, Ctrl-R search) when it is
installed and both ends are a terminal, else from ``readline``; when standard input
is not a terminal, commands are read line by line without a prompt, so the REPL can
be scripted and tested. Every line is stored durably *before* the model trains on it,
so a line whose prompt has come back survives any crash. The state is saved on
``/save``, ``/quit``, end of input, Ctrl-C/SIGINT and SIGTERM; a second Ctrl-C while
training quits at once (the last save and every stored line are still intact).

An error in one command -- a bad argument, a file that cannot be read, a full disk on
``/save``, a line of input that is not UTF-8 -- is reported on one line (``error: ...``)
and the REPL goes on; whatever ends it, it saves on the way out.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Callable, Iterator, TextIO

from ..config.sampling import MAX_TEMPERATURE, check_sampling
from ..utils.errors import FoundryError
from .learner import OnlineLearner

PROMPT = "> "

HELP = """\
commands (anything not starting with / is text to learn):
  TEXT               store TEXT for good and train a pulse on replayed inputs
  /load_txt FILE     learn a UTF-8 text file line by line (progress bar; no sampling per line)
  /train FILE        the same as /load_txt
  /gen [PREFIX]      continue PREFIX to the end of its line (or write a new line), EMA weights
  /temp=X            sampling temperature of /gen (0 = greedy)
  /topp=X            top-p of /gen, in (0, 1] (1 = off)
  /steps=N           training steps per typed line
  /save [DIR]        save now (DIR: also save a snapshot there)
  /load [DIR]        load the last save (or the snapshot in DIR); stored inputs stay
  /stats             vocabulary, stored inputs, steps, recent loss, disk use
  /reset             erase the model and every stored input (asks first)
  /help              this text
  /quit              save and leave (so do Ctrl-D and Ctrl-C)
  //TEXT             learn TEXT that starts with '/'"""


class _BadLine(str):
    """A line of standard input that is not UTF-8 (reported, never learned)."""


class _Stop(Exception):
    """A signal asked the REPL to save and leave."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Repl:
    """Runs commands against an :class:`OnlineLearner`.

    Args:
        learner: the learner (the REPL saves and closes it when it ends).
        stdin, stdout: streams (default: the process's).
        interactive: prompt, line editing and history (default: both streams are terminals).
        sample_lines: after each typed line, print a short sample.
        file_steps: steps per line for files, for this session (None = the learner's setting).
    """

    def __init__(self, learner: OnlineLearner, stdin: TextIO | None = None, stdout: TextIO | None = None,
                 interactive: bool | None = None, sample_lines: bool = False, file_steps: float | None = None):
        self.learner = learner
        self.stdin = stdin or sys.stdin
        self.out = stdout or sys.stdout
        if interactive is None:
            interactive = _isatty(self.stdin) and _isatty(self.out)
        self.interactive = interactive
        self.sample_lines = sample_lines
        self.file_steps = file_steps
        self._lines: Iterator[str] | None = None
        self._busy = False
        self._stop: _Stop | None = None
        self._compile_told = False

    # ---------------------------------------------------------------- output
    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def error(self, text: str) -> None:
        self.say(f"error: {text}")

    # ----------------------------------------------------------------- input
    def _line_source(self) -> Iterator[str]:
        if not self.interactive:
            # Bytes, decoded line by line: one bad byte costs its line, not the session.
            raw = getattr(self.stdin, "buffer", None)
            for line in raw if raw is not None else self.stdin:
                if isinstance(line, bytes):
                    try:
                        line = line.decode("utf-8")
                    except UnicodeDecodeError:
                        yield _BadLine()
                        continue
                yield line.rstrip("\r\n")
            return
        history = self.learner.state / "history"
        try:
            from prompt_toolkit import PromptSession
            from prompt_toolkit.history import FileHistory
        except ImportError:
            yield from self._readline_source(history)
            return
        session = PromptSession(history=FileHistory(str(history)))
        while True:
            try:
                yield session.prompt(PROMPT)
            except EOFError:
                return
            except KeyboardInterrupt:  # Ctrl-C at the prompt: leave, saving
                raise _Stop(signal.SIGINT) from None

    def _readline_source(self, history: Path) -> Iterator[str]:
        try:
            import readline
        except ImportError:  # pragma: no cover - Python without readline
            readline = None
        if readline is not None:
            try:
                readline.read_history_file(history)
            except OSError:
                pass
        try:
            while True:
                try:
                    line = input(PROMPT)
                except EOFError:
                    return
                except KeyboardInterrupt:
                    raise _Stop(signal.SIGINT) from None
                yield line
        finally:
            if readline is not None:
                try:
                    readline.write_history_file(history)
                except OSError:
                    pass

    def _next_line(self) -> str | None:
        if self._lines is None:
            self._lines = self._line_source()
        return next(self._lines, None)

    # ---------------------------------------------------------------- signals
    def _on_signal(self, signum, frame) -> None:
        if self._busy:
            if self.learner.stop_requested:  # a second Ctrl-C while training: leave now
                raise KeyboardInterrupt
            self.learner.stop_requested = True
            self._stop = _Stop(signum)
            return
        raise _Stop(signum)

    # ------------------------------------------------------------------- loop
    def run(self) -> int:
        """Read and run commands until /quit, end of input or a signal; returns the exit code."""
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        code = 0
        try:
            self._banner()
            while True:
                try:
                    line = self._next_line()
                    if line is None:
                        break
                    # While a command runs, a signal only asks it to stop at a safe point
                    # (between training steps); then the state is saved below.
                    self._busy = True
                    try:
                        keep_going = self.handle(line)
                    except (_Stop, KeyboardInterrupt):
                        raise
                    except Exception as e:  # a bug or a surprise of one command must not lose the session
                        self.error(_one_line(e))
                        keep_going = True
                    finally:
                        self._busy = False
                    if self._stop is not None:
                        raise self._stop
                    if not keep_going:
                        break
                except _Stop as stop:
                    code = 128 + stop.signum
                    self.say(f"\n{stop} received: saving and leaving")
                    break
                except (OSError, UnicodeDecodeError) as e:  # standard input itself failed
                    self.error(f"cannot read input: {_one_line(e)}")
                    break
            self._busy = True
            self._save_quietly()
        except KeyboardInterrupt:
            self.say("\ninterrupted: left without saving (the last save and every stored input are intact)")
            code = 130
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.learner.close()
        return code

    def _banner(self) -> None:
        st = self.learner.stats()
        fresh = "new state" if st["steps"] == 0 and st["inputs"] == 0 else f"step {st['steps']}"
        self.say(f"foundry online · {st['state']} · {fresh} · {st['inputs']} stored inputs · "
                 f"vocabulary {st['vocab_size']} · /help for commands")
        if st["damaged"]:
            self.say(f"warning: {st['damaged']} damaged records skipped "
                     f"(`foundry online --repair --state {st['state']}` rewrites the store without them)")

    def _save_quietly(self) -> None:
        try:
            path = self.learner.save()
            self.say(f"saved {path} (step {self.learner.step})")
        except Exception as e:
            self.error(f"save failed: {_one_line(e)}")

    # ---------------------------------------------------------------- commands
    def handle(self, line: str) -> bool:
        """Run one input line; False means leave."""
        if isinstance(line, _BadLine):
            self.error("a line of input is not UTF-8 text; skipped")
            return True
        line = line.rstrip("\r\n")
        if not line.strip():
            return True
        if line.startswith("//"):
            return self._learn(line[1:])
        if not line.startswith("/"):
            return self._learn(line)
        cmd, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        name, eq, value = cmd.partition("=")
        try:
            if eq:
                return self._set(name, value.strip() if not arg else f"{value} {arg}".strip())
            handler: Callable[[str], bool] | None = getattr(self, f"_cmd_{name}", None)
            if handler is None or name not in COMMANDS:
                self.error(f"unknown command /{name} (/help lists the commands)")
                return True
            return handler(arg)
        except FoundryError as e:
            self.error(str(e))
            return True
        except (OSError, ValueError) as e:  # a path the system refuses, a full disk, ...
            self.error(f"/{name}: {_one_line(e)}")
            return True

    def _tell_about_compiling(self) -> None:
        if self.learner.compiled and not self._compile_told:
            self._compile_told = True
            self.say("compiling the model for faster pulses: the first waits for it "
                     "(about 10 s on a new machine, a few seconds once cached)")

    def _learn(self, text: str) -> bool:
        self._tell_about_compiling()
        result = self.learner.learn(text)
        loss = f"loss {result.loss:.4f}" if result.loss is not None else "no loss"
        self.say(f"learned · {result.steps} steps · {loss} · {result.seconds:.2f}s · "
                 f"{len(self.learner.store)} inputs · vocabulary {self.learner.tokenizer.vocab_size}")
        if self.sample_lines and not self.learner.stop_requested:
            self._cmd_gen("")
        return True

    def _set(self, name: str, value: str) -> bool:
        s = self.learner.settings
        try:
            if name == "temp":
                v = float(value)
                check_sampling(temperature=v)  # the bounds of every sampler
                s.temperature = v
                self.say(f"temperature {v:g}" + (" (greedy)" if v == 0 else ""))
            elif name == "topp":
                v = float(value)
                check_sampling(top_p=v)
                s.top_p = v
                self.say(f"top-p {v:g}" + (" (off)" if v == 1 else ""))
            elif name == "steps":
                v = int(value)
                if not 1 <= v <= 100_000:
                    raise ValueError
                s.steps = v
                self.say(f"{v} steps per typed line")
            else:
                self.error(f"unknown setting /{name}= (settings: /temp=X, /topp=X, /steps=N)")
        except (ValueError, FoundryError):
            wants = {"temp": f"a number from 0 to {MAX_TEMPERATURE:g}", "topp": "a number in (0, 1]",
                     "steps": "an integer from 1 to 100000"}
            self.error(f"/{name}= wants {wants[name]}, not {value!r}")
        return True

    def _cmd_help(self, arg: str) -> bool:
        self.say(HELP)
        return True

    def _cmd_quit(self, arg: str) -> bool:
        return False

    _cmd_exit = _cmd_quit

    def _cmd_gen(self, arg: str) -> bool:
        self.out.write(arg)
        self.out.flush()
        for piece in self.learner.stream(arg):
            self.out.write(piece)
            self.out.flush()
        self.say()
        return True

    def _cmd_load_txt(self, arg: str) -> bool:
        if not arg:
            self.error("/load_txt needs a file: /load_txt FILE")
            return True
        from rich.progress import TextColumn

        from ..utils.progress import progress_bar

        path = Path(arg).expanduser()
        steps = self.file_steps
        if path.is_file():  # a missing file gets its one-line error, not a note about compiling first
            self._tell_about_compiling()
        with progress_bar(True, TextColumn("{task.fields[status]}")) as bar:
            task = bar.add_task(path.name[:30], total=None, status="")

            def on_line(i: int, n: int, result) -> None:
                status = f"loss {result.loss:.3f}" if result is not None and result.loss is not None else ""
                bar.update(task, completed=i, total=n, status=status)

            summary = self.learner.learn_file(path, steps, on_line=on_line)
        loss = f" · loss {summary['loss']:.4f}" if summary["loss"] is not None else ""
        stopped = "" if summary["lines"] == summary["total_lines"] else f" (stopped after {summary['lines']} of {summary['total_lines']})"
        self.say(f"learned {summary['lines']} lines of {path.name}{stopped} · {summary['steps']} steps{loss} · "
                 f"{summary['seconds']:.1f}s · {len(self.learner.store)} inputs · vocabulary {self.learner.tokenizer.vocab_size}")
        return True

    _cmd_train = _cmd_load_txt

    def _cmd_save(self, arg: str) -> bool:
        path = self.learner.save()
        msg = f"saved {path} (step {self.learner.step})"
        if arg:
            snap = self.learner.save(Path(arg).expanduser())
            msg += f" and a snapshot to {snap}"
        self.say(msg)
        return True

    def _cmd_load(self, arg: str) -> bool:
        self.learner.load(Path(arg).expanduser() if arg else None)
        self.say(f"loaded {arg or self.learner.state / 'model'} (step {self.learner.step}, "
                 f"vocabulary {self.learner.tokenizer.vocab_size}, {len(self.learner.store)} stored inputs)")
        return True

    def _cmd_stats(self, arg: str) -> bool:
        st = self.learner.stats()
        s = st["settings"]
        loss = f"{st['recent_loss']:.4f}" if st["recent_loss"] is not None else "-"
        self.say(f"vocabulary   {st['vocab_size']} characters (model rows {st['vocab_capacity']})")
        self.say(f"stored       {st['inputs']} inputs, {_size(st['input_bytes'])} of text")
        self.say(f"training     {st['steps']} steps, recent loss {loss}, lr {st['lr']:.2e}, "
                 f"{st['parameters'] / 1e6:.2f}M parameters")
        self.say(f"sampling     temp {s['temperature']:g}, top-p {s['top_p']:g}, {s['steps']} steps per line")
        self.say(f"disk         {_size(st['disk_bytes'])} in {st['state']}")
        return True

    def _cmd_reset(self, arg: str) -> bool:
        n = len(self.learner.store)
        self.say(f"/reset erases the model and all {n} stored inputs for good. Type yes to confirm:")
        if self.interactive:
            self.out.write(PROMPT)
            self.out.flush()
        self._busy = False  # waiting for the answer: a signal may end the session here
        try:
            answer = self._next_line()
        finally:
            self._busy = True
        if answer is None or answer.strip().lower() != "yes":
            self.say("reset cancelled; nothing was erased")
            return answer is not None
        self.learner.reset()
        self.learner.save()
        self.say("reset: empty model, empty store")
        return True


COMMANDS = {"help", "quit", "exit", "gen", "load_txt", "train", "save", "load", "stats", "reset"}


def _one_line(e: BaseException) -> str:
    """An exception as one line: ``strerror: filename`` for an OSError, else its first line."""
    if isinstance(e, FoundryError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    text = str(e).splitlines()[0][:300] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def run_repl(learner: OnlineLearner, **kwargs) -> int:
    """Run the REPL on ``learner`` until the user leaves; returns the exit code."""
    return Repl(learner, **kwargs).run()
