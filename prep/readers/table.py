"""Reader for tables: CSV, TSV, XLSX, XLS, with column aliases and encoding detection.

A row becomes one conversation from its question/answer columns, or from a
``text`` column in the ``<s>Human:`` format (one cell = one conversation,
possibly multi-turn).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from prep.errors import PrepError
from prep.readers.decode import read_text_file
from prep.records import Conversation, Provenance, Rejected, Turn
from prep.textformat import parse_text

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "question": ("question", "instruction", "human", "prompt", "query", "问题", "提问", "用户"),
    "input": ("input", "输入"),
    "answer": ("answer", "output", "assistant", "response", "回答", "回复", "答案"),
    "text": ("text", "文本"),
    "system": ("system", "系统提示"),
    "category": ("category", "类别", "分类", "主题"),
    "annotator": ("annotator", "标注人", "标注员"),
    "id": ("id", "编号"),
    "verdict": ("verdict", "keep", "标注结果", "是否保留"),
}


def _load_frames(path: Path) -> list[tuple[str | None, pd.DataFrame]]:
    """The table's data: (sheet name, frame) for every sheet of a workbook, (None, frame) for a text table."""
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xls"):
        try:
            sheets = pd.read_excel(path, sheet_name=None, dtype=str, keep_default_na=False,
                                   engine="openpyxl" if suffix == ".xlsx" else "xlrd")
        except Exception as err:  # openpyxl/xlrd raise many types for a non-workbook
            raise PrepError(f"{path}: not a readable {suffix[1:].upper()} workbook ({type(err).__name__}); expected an Excel file saved by Excel or LibreOffice.") from None
        return list(sheets.items())
    text = read_text_file(path)
    body = _LEADING_BLANK_LINES.sub("", text)  # the header is the first line with text
    first_row = 2 + text[: len(text) - len(body)].count("\n")
    frame = _plain_tsv(body) if suffix == ".tsv" else None
    try:  # blank lines kept, so row numbers match what a spreadsheet shows; _read_frame skips blank rows
        if frame is None:
            frame = pd.read_csv(io.StringIO(body), sep="\t" if suffix == ".tsv" else ",", dtype=str,
                                keep_default_na=False, skip_blank_lines=False)
        if not isinstance(frame.index, pd.RangeIndex):  # pandas took the first cells of every row as an index
            raise PrepError(f"{path}: malformed {suffix[1:].upper()} (line {first_row} has more cells than the header; "
                            f"expected every row to have as many; quote a cell that holds a {'tab' if suffix == '.tsv' else 'comma'}).")
        frame.attrs["first_row"] = first_row
        return [(None, frame)]
    except pd.errors.ParserError as err:
        reason = " ".join(str(err).split())  # pandas ends its message with a line break
        raise PrepError(f"{path}: malformed {suffix[1:].upper()} ({reason}); expected one header row and rows of the same "
                        "number of cells, quotes closed.") from None
    except pd.errors.EmptyDataError:
        raise PrepError(f"{path}: the file is empty; expected a header row with question and answer columns.") from None


_EXCEL_QUOTED = re.compile(r'"((?:[^"]|"")*)"', re.DOTALL)
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*(?:\r\n?|\n))+")
_LINE_BREAK = re.compile(r"\r\n?|\n")


def _plain_tsv(text: str) -> pd.DataFrame | None:
    """A TSV in which every line is one row (as many tabs as the header), read with quotes taken literally, as a
    hand-written or database-exported TSV means them: ``"躺平"是什么意思？`` keeps its quotes and a stray quote
    cannot swallow the rows after it. Only a cell wholly in Excel's quotes, inner quotes doubled, is unquoted.
    None, for the CSV parser, when some line has another number of cells or a cell opens a quote it does not
    close on its line: Excel's quoted cells holding line breaks or tabs."""
    lines = _LINE_BREAK.split(text)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return None
    width = lines[0].count("\t")
    cells = [line.split("\t") if line.strip() else [""] * (width + 1) for line in lines]
    if any(len(row) != width + 1 or any(_opens_quote(cell) for cell in row) for row in cells):
        return None
    return pd.DataFrame([[_unquote(cell) for cell in row] for row in cells[1:]], columns=_unique([name.strip() for name in cells[0]]), dtype=str)


def _opens_quote(cell: str) -> bool:
    """A cell starting with a quote that an odd number of quotes leaves open (its cell goes on past the line)."""
    cell = cell.strip()
    return cell.startswith('"') and cell.count('"') % 2 == 1


def _unique(names: list[str]) -> list[str]:
    """Header names made unique as pandas does (the second ``answer`` becomes ``answer.1``): the first one is read."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        unique.append(f"{name}.{seen[name]}" if name in seen else name)
        seen[name] = seen.get(name, 0) + 1
    return unique


def _unquote(cell: str) -> str:
    match = _EXCEL_QUOTED.fullmatch(cell.strip())
    return match.group(1).replace('""', '"') if match else cell


def _find_columns(frame: pd.DataFrame) -> dict[str, str] | None:
    """Canonical column name -> the frame's column, for the aliases found; None when there is nothing to read."""
    by_lower = {str(col).strip().lower(): col for col in frame.columns}
    found = {}
    for canonical, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in by_lower:
                found[canonical] = by_lower[alias]
                break
    return found if {"question", "answer"} <= found.keys() or "text" in found else None


def _resolve_columns(path: Path, frame: pd.DataFrame) -> dict[str, str]:
    found = _find_columns(frame)
    if found is None:
        columns = ", ".join(map(str, frame.columns)) or "none"
        one_cell = str(frame.columns[0]) if len(frame.columns) == 1 else ""
        separator = next((name for sep, name in ((",", "comma"), ("\t", "tab"), (";", "semicolon")) if sep in one_cell), None)
        hint = (f"; the header is one cell holding {separator}s: the file looks {separator}-separated (name it .csv for "
                "commas, .tsv for tabs)" if separator else "")
        raise PrepError(
            f"{path}: no question/answer columns (found: {columns}){hint}; expected question/instruction/问题 "
            "and answer/output/回答 columns, or a text column in the <s>Human: format."
        )
    return found


def _refuse_two_answer_columns(path: Path, frame: pd.DataFrame) -> None:
    """Two columns that both name the answer (answer and output) and hold different text: which one trains? (The first
    alias was read and the other dropped without a word.) Question aliases are left alone: 用户 is often a user's name."""
    columns = [col for col in frame.columns if str(col).strip().lower() in COLUMN_ALIASES["answer"]]
    texts = [frame[col].fillna("").astype(str).str.strip() for col in columns]
    filled = [(col, text) for col, text in zip(columns, texts) if text.ne("").any()]
    if len(filled) > 1 and any(not filled[0][1].equals(text) for _, text in filled[1:]):
        raise PrepError(f"{path}: columns {', '.join(repr(str(col)) for col, _ in filled)} all name the answer and hold "
                        "different text; expected one answer column (rename or remove the others).")


def read_table(path: Path, origin: str = "labelled") -> Iterator[Conversation | Rejected]:
    """Yield one record per data row (row numbers as a spreadsheet shows them, header = row 1).

    Every sheet of a workbook is read ("sheet NAME row N" when there are several). A non-empty sheet without
    question/answer columns is one rejected row that says so, unless no sheet has them (then the file is an error).
    """
    sheets = [(name, frame, _find_columns(frame)) for name, frame in _load_frames(path) if name is None or len(frame.columns)]
    if not any(columns for _, _, columns in sheets):  # blank sheets are left out above
        _resolve_columns(path, sheets[0][1] if sheets else pd.DataFrame())  # raises the one-sentence error
    for name, frame, columns in sheets:
        where = f"sheet {name} " if len(sheets) > 1 else ""
        if columns is None:
            found = ", ".join(map(str, frame.columns)) or "none"
            yield Rejected("sheet_without_columns", Provenance(str(path), f"sheet {name}", origin=origin),
                           detail=f"no question/answer or text columns (found: {found}); {len(frame)} rows not read")
            continue
        _refuse_two_answer_columns(path, frame)
        yield from _read_frame(path, frame, columns, where, origin)


def _read_frame(path: Path, frame: pd.DataFrame, columns: dict[str, str], where: str, origin: str) -> Iterator[Conversation | Rejected]:
    for index, row in enumerate(frame.to_dict("records"), start=frame.attrs.get("first_row", 2)):
        if not any(str(value).strip() for value in row.values()):
            continue  # a blank line or an empty spreadsheet row: no data, but it keeps its row number
        cell = {key: str(row[col]).strip() for key, col in columns.items()}
        provenance = Provenance(str(path), f"{where}row {index}", origin=origin, annotator=cell.get("annotator") or None)
        extra = {"category": cell.get("category") or None, "record_id": cell.get("id") or None,
                 "meta": {"verdict": cell["verdict"]} if cell.get("verdict") else {}}
        if "question" in cell and (cell["question"] or cell.get("answer")):
            question = cell["question"]
            if cell.get("input"):
                question = f"{question}\n{cell['input']}"
            turns = [Turn("user", question), Turn("assistant", cell.get("answer", ""))]
            yield Conversation(turns, provenance, system=cell.get("system") or None, **extra)
            continue
        parsed = parse_text(cell.get("text", ""), one_conversation=True)
        if not parsed:
            yield Rejected("empty_row", provenance)
        elif parsed[0].error:
            yield Rejected(parsed[0].error, provenance, raw=parsed[0].raw)
        else:
            yield Conversation(parsed[0].turns, provenance, system=parsed[0].system or cell.get("system") or None, **extra)
