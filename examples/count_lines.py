"""Count the lines of every Python file in a git repository, one node per file, in parallel.

orchestrator run examples/count_lines.py:plan --input repo=.
"""

from pydantic import BaseModel

from orchestrator import NodeContext, Plan, Retry, node


class Repo(BaseModel):
    repo: str


class Files(BaseModel):
    files: list[str]


class File(BaseModel):
    repo: str
    path: str


class Count(BaseModel):
    path: str
    lines: int


class Counts(BaseModel):
    paths: list[str]
    lines: list[int]


class Report(BaseModel):
    total: int
    largest: str


@node("list-files", workspace="repo", timeout=60)
async def list_files(ctx: NodeContext, inputs: Repo) -> Files:
    out = await ctx.exec(["git", "ls-files", "*.py"], check=True)
    return Files(files=out.stdout.split())


@node("count-lines", workspace="repo", retry=Retry(max_attempts=3, backoff="exp"), timeout=60)
async def count_lines(ctx: NodeContext, inputs: File) -> Count:
    out = await ctx.exec(["wc", "-l", inputs.path], check=True)
    return Count(path=inputs.path, lines=int(out.stdout.split()[0]))


@node("report", effects={"fs"})
async def report(ctx: NodeContext, inputs: Counts) -> Report:
    total = sum(inputs.lines)
    largest = max(zip(inputs.lines, inputs.paths, strict=True))[1] if inputs.paths else ""
    await ctx.write("report.txt", f"{total} lines; largest file {largest}\n")
    return Report(total=total, largest=largest)


plan = Plan("count-lines", inputs=Repo)
files = plan.add(list_files, repo=plan.input("repo"))
counts = plan.map(
    count_lines, over=files.out.files, item="path", max_items=10_000, repo=plan.input("repo")
)
plan.add(report, paths=counts.out.path, lines=counts.out.lines)
