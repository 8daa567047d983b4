"""Synthetic Chinese counselling conversations for benchmarks (not training data).

Questions are random combinations of people, situations and feelings, so most
are distinct; a share are exact or near duplicates, as in real merged data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PEOPLE = ["我是一名高三学生", "我是刚工作的程序员", "我是两个孩子的妈妈", "我是一名护士", "我刚退休", "我在读研究生", "我是外卖骑手",
          "我是公司中层", "我刚来大城市打工", "我是大一新生", "我是单亲爸爸", "我是自由职业者", "我在备考公务员", "我是一名教师"]
SITUATIONS = ["最近工作压力特别大", "和父母总是吵架", "刚和交往三年的对象分手", "考试成绩一落千丈", "每天晚上都睡不着", "同事总是排挤我",
              "孩子沉迷手机", "养了十年的狗去世了", "被领导当众批评", "总觉得自己一事无成", "社交场合就紧张出汗", "对未来很迷茫",
              "婆媳关系很紧张", "每天都在拖延", "身体检查出了小毛病", "好朋友不理我了", "换了新城市没有朋友", "总在深夜刷手机"]
FEELINGS = ["心里很难受", "焦虑得喘不过气", "整个人提不起劲", "特别委屈", "很自卑", "控制不住想哭", "脾气越来越差", "不知道怎么办",
            "胸口闷得慌", "觉得没人理解我", "每天都很累", "越想越害怕"]
ASKS = ["我该怎么调整？", "有什么办法吗？", "这正常吗？", "你能帮帮我吗？", "我应该怎么做？", "怎样才能好起来？"]
OPENINGS = ["听起来你最近真的很不容易。", "谢谢你愿意说出来，这需要勇气。", "我能感受到你的疲惫和无助。", "这种感觉确实让人很难受。"]
ADVICE = ["可以试着把担心的事写下来，分成能做和不能做的两类。", "每天留十分钟做腹式呼吸，让身体先慢下来。", "规律作息，睡前一小时放下手机。",
          "找一个信任的人聊聊，不必一个人扛着。", "把大任务拆成很小的一步，先完成第一步。", "留意那些自动冒出来的负面想法，问问自己证据是什么。",
          "适当运动，比如每天快走二十分钟。", "和对方约一个平静的时间，用“我感到……”开头表达需要。"]
CLOSINGS = ["你愿意说说最让你难受的是哪一刻吗？", "最近有没有哪怕一点点让你放松的时刻？", "你身边有可以倾诉的人吗？", "如果情况持续两周以上，建议寻求专业心理咨询。"]


DETAILS = ["连续加班", "房贷压力", "孩子升学", "父母生病", "异地恋", "室友矛盾", "导师催论文", "失业半年", "被裁员", "创业失败",
           "体重增加", "相亲不顺", "婚礼筹备", "搬家", "宠物生病", "朋友借钱不还", "被网暴", "考研二战", "实习转正", "职称评审"]


def conversation(rng: random.Random) -> dict:
    a, b = rng.sample(SITUATIONS, 2)
    d1, d2 = rng.sample(DETAILS, 2)
    question = (f"{rng.choice(PEOPLE)}，今年{rng.randint(15, 75)}岁，{a}，又赶上{d1}和{d2}，"
                f"已经{rng.randint(2, 48)}周了，{rng.choice(FEELINGS)}，{b}，{rng.choice(ASKS)}")
    answer = rng.choice(OPENINGS) + "".join(rng.sample(ADVICE, 3)) + rng.choice(CLOSINGS)
    return {"instruction": question, "input": "", "output": answer}


def generate(n: int, seed: int = 0, duplicate_share: float = 0.05) -> list[dict]:
    rng = random.Random(seed)
    items: list[dict] = []
    for _ in range(n):
        if items and rng.random() < duplicate_share:
            twin = dict(rng.choice(items))
            if rng.random() < 0.5:  # near duplicate: one extra particle
                twin["instruction"] = twin["instruction"].replace("，", "，真的", 1)
            items.append(twin)
        else:
            items.append(conversation(rng))
    return items


def write(path: Path, n: int, seed: int = 0) -> Path:
    path.write_text("\n".join(json.dumps(item, ensure_ascii=False) for item in generate(n, seed)) + "\n", encoding="utf-8")
    return path
