"""The built-in fact world: made-up entities and their facts, in English and Chinese.

Why made up: a fact the backbone could know already ("Paris is the capital of France")
cannot show that an answer came from the memory. Every subject here is a name generated
from syllables ("Velmora Quist", "岚墨城"), so the backbone alone is at chance, and a
counterfactual entry (same subject, another value) must change the answer.

The world, for a seed:

* **entities** of three kinds (person, city, company), per language, split into
  ``train`` (their text trains the backbone, their facts the memory modules), ``memory_only``
  (their facts only ever reach the store, never a trainable parameter) and ``modules_only``
  (their facts train the memory modules only: the backbone never reads them, so the memory
  modules learn to retrieve and read names the backbone does not know — as at evaluation);
* **relations** (22), each with a value set per language, three statement phrasings and
  four question phrasings per language, the last question phrasing **held out** of training;
* a few relations **unseen**: held out of training entirely (no train fact, no train question);
* **distractors**: facts about yet other made-up entities, to fill a store to 40k+ entries.

A user's own facts and questions come from ``.jsonl`` files (:func:`read_facts_jsonl`,
:func:`read_questions_jsonl`).
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..data.sources import iter_jsonl
from ..utils.errors import FoundryError
from .store import check_entry_text

SPLITS = ("train", "memory_only", "modules_only")
LANGS = ("en", "zh")
HELDOUT_QUESTIONS = 1  # the last question phrasing of each relation and language is never trained on


@dataclass(frozen=True)
class Relation:
    """A relation: its subject kind, and per language its values, statements and questions.

    ``{s}`` is the subject and ``{o}`` the object in every phrasing; a question's answer is the object.
    """

    name: str
    kind: str  # person | city | company
    values: dict[str, tuple[str, ...]]
    statements: dict[str, tuple[str, ...]]
    questions: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Fact:
    """One fact and its text.

    Attributes:
        subject, relation, object: the triple (relation is a :class:`Relation` name, or the user's words).
        lang: ``en`` or ``zh``.
        text: the statement as the store keeps it.
        phrasing: which statement phrasing rendered it (a counterfactual keeps it).
    """

    subject: str
    relation: str
    object: str
    lang: str
    text: str
    phrasing: int = 0


@dataclass(frozen=True)
class Question:
    """A question and the answer an exact match is judged against.

    Attributes:
        question: the question text.
        answer: the expected answer (the fact's object).
        fact: index of its fact in ``world.facts(split)`` (None for a user's question).
        relation: the relation asked about (None for a user's question).
        lang: ``en`` or ``zh`` (None for a user's question).
    """

    question: str
    answer: str
    fact: int | None = None
    relation: str | None = None
    lang: str | None = None


# ----------------------------------------------------------------------------- values
_CITIES = {"en": ("Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Dublin", "Quito", "Tbilisi", "Riga", "Accra",
                  "Osaka", "Porto"),
           "zh": ("杭州", "成都", "西安", "昆明", "大连", "厦门", "拉萨", "桂林", "洛阳", "苏州", "青岛", "南昌")}


def _years(lo: int, hi: int, step: int) -> dict[str, tuple[str, ...]]:
    years = tuple(str(y) for y in range(lo, hi, step))
    return {"en": years, "zh": years}


def _rel(name: str, kind: str, values: dict, en: tuple, zh: tuple) -> Relation:
    """``en``/``zh``: (three statements, four questions) each, the last question the held-out one."""
    return Relation(name, kind, values, {"en": en[0], "zh": zh[0]}, {"en": en[1], "zh": zh[1]})


RELATIONS: tuple[Relation, ...] = (
    # ------------------------------------------------------------------ people
    _rel("born_in", "person", _CITIES,
         (("{s} was born in {o}.", "{s} is a native of {o}.", "The birthplace of {s} is {o}."),
          ("Where was {s} born?", "In which city was {s} born?", "What is the birthplace of {s}?",
           "{s} came into the world in which city?")),
         (("{s}出生在{o}。", "{s}的出生地是{o}。", "{s}生于{o}。"),
          ("{s}出生在哪里？", "{s}的出生地是哪座城市？", "{s}生于哪座城市？", "{s}是在哪座城市降生的？"))),
    _rel("lives_in", "person", _CITIES,
         (("{s} lives in {o}.", "{s} makes a home in {o}.", "These days {s} resides in {o}."),
          ("Where does {s} live?", "In which city does {s} live?", "Which city is home to {s}?",
           "Where does {s} reside these days?")),
         (("{s}住在{o}。", "{s}现在定居在{o}。", "{s}的家在{o}。"),
          ("{s}住在哪里？", "{s}现在定居在哪座城市？", "{s}的家在哪座城市？", "{s}目前居住在什么地方？"))),
    _rel("works_as", "person",
         {"en": ("baker", "pilot", "nurse", "carpenter", "librarian", "chemist", "gardener", "tailor", "fisherman",
                 "blacksmith", "violinist", "surveyor"),
          "zh": ("面包师", "飞行员", "护士", "木匠", "图书管理员", "化学家", "园丁", "裁缝", "渔夫", "铁匠",
                 "小提琴手", "测量员")},
         (("{s} works as a {o}.", "By trade, {s} is a {o}.", "{s} earns a living as a {o}."),
          ("What does {s} do for a living?", "What is the job of {s}?", "What is {s}'s profession?",
           "How does {s} earn a living?")),
         (("{s}的职业是{o}。", "{s}是一名{o}。", "{s}以做{o}为生。"),
          ("{s}的职业是什么？", "{s}是做什么工作的？", "{s}以什么为生？", "{s}从事哪一行？"))),
    _rel("favourite_colour", "person",
         {"en": ("red", "blue", "green", "yellow", "purple", "orange", "grey", "teal", "pink", "brown"),
          "zh": ("红色", "蓝色", "绿色", "黄色", "紫色", "橙色", "灰色", "青色", "粉色", "棕色")},
         (("The favourite colour of {s} is {o}.", "{s} likes the colour {o} best.", "{s}'s favourite colour is {o}."),
          ("What is the favourite colour of {s}?", "Which colour does {s} like best?", "What is {s}'s favourite colour?",
           "If {s} could pick one colour, which would it be?")),
         (("{s}最喜欢的颜色是{o}。", "{s}最爱{o}。", "在所有颜色里，{s}偏爱{o}。"),
          ("{s}最喜欢什么颜色？", "{s}最喜欢的颜色是什么？", "{s}最爱哪种颜色？", "{s}偏爱哪一种颜色？"))),
    _rel("favourite_food", "person",
         {"en": ("noodles", "dumplings", "lentil soup", "roast duck", "pancakes", "tofu", "rice cakes", "fish stew",
                 "mushroom pie", "plum jam"),
          "zh": ("面条", "饺子", "扁豆汤", "烤鸭", "煎饼", "豆腐", "年糕", "鱼汤", "蘑菇派", "梅子酱")},
         (("The favourite food of {s} is {o}.", "{s} loves to eat {o}.", "{s}'s favourite dish is {o}."),
          ("What is the favourite food of {s}?", "What does {s} love to eat?", "What is {s}'s favourite dish?",
           "Which dish would {s} choose above all others?")),
         (("{s}最喜欢吃{o}。", "{s}最爱的食物是{o}。", "{s}平时最爱吃的是{o}。"),
          ("{s}最喜欢吃什么？", "{s}最爱的食物是什么？", "{s}平时最爱吃什么？", "哪道菜是{s}的心头好？"))),
    _rel("plays_instrument", "person",
         {"en": ("piano", "cello", "flute", "drums", "harp", "guitar", "oboe", "trumpet", "accordion", "banjo"),
          "zh": ("钢琴", "大提琴", "长笛", "鼓", "竖琴", "吉他", "双簧管", "小号", "手风琴", "二胡")},
         (("{s} plays the {o}.", "The instrument {s} plays is the {o}.", "{s} is a player of the {o}."),
          ("Which instrument does {s} play?", "What instrument does {s} play?", "What does {s} play in music?",
           "On which instrument does {s} perform?")),
         (("{s}会弹奏{o}。", "{s}演奏的乐器是{o}。", "{s}擅长{o}。"),
          ("{s}演奏什么乐器？", "{s}会弹奏哪种乐器？", "{s}擅长哪种乐器？", "{s}平时练的是什么乐器？"))),
    _rel("speaks", "person",
         {"en": ("Finnish", "Swahili", "Portuguese", "Korean", "Greek", "Hungarian", "Tagalog", "Welsh", "Basque",
                 "Icelandic"),
          "zh": ("芬兰语", "斯瓦希里语", "葡萄牙语", "韩语", "希腊语", "匈牙利语", "他加禄语", "威尔士语", "巴斯克语",
                 "冰岛语")},
         (("{s} speaks {o}.", "The second language of {s} is {o}.", "{s} is fluent in {o}."),
          ("Which language does {s} speak?", "What is the second language of {s}?", "In which language is {s} fluent?",
           "Besides their own tongue, what does {s} speak?")),
         (("{s}会说{o}。", "{s}的第二语言是{o}。", "{s}能讲流利的{o}。"),
          ("{s}会说哪种语言？", "{s}的第二语言是什么？", "{s}能讲流利的什么语言？", "{s}除了母语还会说什么？"))),
    _rel("pet", "person",
         {"en": ("cat", "parrot", "tortoise", "rabbit", "goldfish", "hamster", "ferret", "lizard", "dog", "hedgehog"),
          "zh": ("猫", "鹦鹉", "乌龟", "兔子", "金鱼", "仓鼠", "雪貂", "蜥蜴", "狗", "刺猬")},
         (("{s} keeps a {o} as a pet.", "The pet of {s} is a {o}.", "{s} owns a pet {o}."),
          ("What pet does {s} keep?", "What kind of pet does {s} have?", "What is the pet of {s}?",
           "Which animal lives with {s} as a pet?")),
         (("{s}养了一只{o}。", "{s}的宠物是{o}。", "{s}家里有一只宠物{o}。"),
          ("{s}养了什么宠物？", "{s}的宠物是什么？", "{s}家里有什么宠物？", "陪伴{s}的是哪种小动物？"))),
    _rel("born_year", "person", _years(1930, 2000, 1),
         (("{s} was born in the year {o}.", "The birth year of {s} is {o}.", "{s} was born in {o}, so the records say."),
          ("In which year was {s} born?", "What is the birth year of {s}?", "When was {s} born?",
           "What year does the birth certificate of {s} show?")),
         (("{s}生于{o}年。", "{s}的出生年份是{o}年。", "{s}出生于{o}年。"),
          ("{s}是哪一年出生的？", "{s}的出生年份是哪一年？", "{s}生于哪一年？", "{s}的出生证明上写的是哪一年？"))),
    _rel("studied", "person",
         {"en": ("geology", "music", "medicine", "law", "astronomy", "botany", "history", "mathematics", "linguistics",
                 "economics"),
          "zh": ("地质学", "音乐", "医学", "法律", "天文学", "植物学", "历史", "数学", "语言学", "经济学")},
         (("{s} studied {o}.", "At university, {s} studied {o}.", "The degree of {s} is in {o}."),
          ("What did {s} study?", "What did {s} study at university?", "In which subject is the degree of {s}?",
           "Which field did {s} major in?")),
         (("{s}学的是{o}。", "{s}在大学读的是{o}。", "{s}的学位是{o}。"),
          ("{s}学的是什么？", "{s}在大学读的是什么专业？", "{s}的学位是什么专业？", "{s}主修哪个领域？"))),
    _rel("hobby", "person",
         {"en": ("chess", "knitting", "birdwatching", "pottery", "rowing", "origami", "fencing", "beekeeping",
                 "calligraphy", "sailing"),
          "zh": ("下棋", "编织", "观鸟", "陶艺", "划船", "折纸", "击剑", "养蜂", "书法", "帆船")},
         (("The hobby of {s} is {o}.", "In spare time, {s} enjoys {o}.", "{s}'s hobby is {o}."),
          ("What is the hobby of {s}?", "What does {s} enjoy in spare time?", "What is {s}'s hobby?",
           "How does {s} like to spend a free afternoon?")),
         (("{s}的爱好是{o}。", "{s}闲暇时喜欢{o}。", "{s}的业余爱好是{o}。"),
          ("{s}的爱好是什么？", "{s}闲暇时喜欢做什么？", "{s}的业余爱好是什么？", "{s}怎样打发空闲的下午？"))),
    _rel("favourite_sport", "person",
         {"en": ("tennis", "rugby", "volleyball", "badminton", "cricket", "hockey", "table tennis", "archery",
                 "cycling", "skiing"),
          "zh": ("网球", "橄榄球", "排球", "羽毛球", "板球", "曲棍球", "乒乓球", "射箭", "自行车", "滑雪")},
         (("The favourite sport of {s} is {o}.", "{s} likes {o} more than any other sport.",
           "{s}'s favourite sport is {o}."),
          ("What is the favourite sport of {s}?", "Which sport does {s} like most?", "What is {s}'s favourite sport?",
           "Which game would {s} rather watch than any other?")),
         (("{s}最喜欢的运动是{o}。", "{s}最爱{o}这项运动。", "在所有运动中，{s}最喜欢{o}。"),
          ("{s}最喜欢什么运动？", "{s}最喜欢的运动是什么？", "{s}最爱哪项运动？", "哪项运动最让{s}着迷？"))),
    _rel("favourite_season", "person",
         {"en": ("spring", "summer", "autumn", "winter"), "zh": ("春天", "夏天", "秋天", "冬天")},
         (("The favourite season of {s} is {o}.", "{s} likes {o} best of all seasons.", "{s}'s favourite season is {o}."),
          ("What is the favourite season of {s}?", "Which season does {s} like best?", "What is {s}'s favourite season?",
           "In which season is {s} happiest?")),
         (("{s}最喜欢的季节是{o}。", "{s}最爱{o}。", "四季之中，{s}偏爱{o}。"),
          ("{s}最喜欢哪个季节？", "{s}最喜欢的季节是什么？", "四季之中{s}偏爱哪一季？", "{s}在哪个季节最开心？"))),
    _rel("favourite_drink", "person",
         {"en": ("green tea", "coffee", "lemonade", "cider", "hot chocolate", "mint tea", "orange juice", "milk"),
          "zh": ("绿茶", "咖啡", "柠檬水", "苹果酒", "热巧克力", "薄荷茶", "橙汁", "牛奶")},
         (("The favourite drink of {s} is {o}.", "{s} likes to drink {o}.", "{s}'s favourite drink is {o}."),
          ("What is the favourite drink of {s}?", "What does {s} like to drink?", "What is {s}'s favourite drink?",
           "What would {s} order at a cafe?")),
         (("{s}最喜欢喝{o}。", "{s}最爱的饮料是{o}。", "{s}平时爱喝{o}。"),
          ("{s}最喜欢喝什么？", "{s}最爱的饮料是什么？", "{s}平时爱喝什么？", "在咖啡馆里{s}会点什么？"))),
    # ------------------------------------------------------------------ cities
    _rel("capital_of", "city",
         {"en": ("Norland", "Estovia", "Calderra", "Miravel", "Ostrane", "Belluna", "Tarsk", "Quelmar"),
          "zh": ("北原国", "东澜国", "卡德拉", "米拉维", "奥斯特", "贝卢纳", "塔斯克", "奎尔玛")},
         (("{s} is the capital of {o}.", "The capital city of {o} is {s}.", "{s} serves as the capital of {o}."),
          ("Which country is {s} the capital of?", "{s} is the capital of which country?",
           "Of which country is {s} the capital city?", "Which nation governs itself from {s}?")),
         (("{s}是{o}的首都。", "{o}的首都是{s}。", "{s}是{o}的首府。"),
          ("{s}是哪个国家的首都？", "{s}是谁的首都？", "{s}是哪国的首府？", "哪个国家把首都设在{s}？"))),
    _rel("city_founded", "city", _years(1200, 1900, 25),
         (("{s} was founded in {o}.", "The city of {s} dates from {o}.", "{s} was established in the year {o}."),
          ("When was {s} founded?", "In which year was {s} founded?", "What year was {s} established?",
           "How far back, in years, does the founding of {s} go?")),
         (("{s}建于{o}年。", "{s}始建于{o}年。", "{s}这座城市创立于{o}年。"),
          ("{s}建于哪一年？", "{s}始建于哪一年？", "{s}是哪一年创立的？", "{s}的建城年份是哪一年？"))),
    _rel("river", "city",
         {"en": ("Amber River", "Silver River", "Jade River", "Crane River", "Willow River", "Stone River",
                 "Mist River", "Fox River"),
          "zh": ("琥珀河", "银河", "玉河", "鹤河", "柳河", "石河", "雾河", "狐河")},
         (("{s} lies on the {o}.", "The river through {s} is the {o}.", "{s} was built on the banks of the {o}."),
          ("Which river does {s} lie on?", "What river runs through {s}?", "On which river was {s} built?",
           "Which river would you cross in {s}?")),
         (("{s}坐落在{o}边。", "流经{s}的河是{o}。", "{s}建在{o}岸边。"),
          ("{s}坐落在哪条河边？", "流经{s}的是哪条河？", "{s}建在哪条河的岸边？", "在{s}过桥时跨过的是哪条河？"))),
    _rel("famous_for", "city",
         {"en": ("glassware", "silk", "cheese", "clocks", "paper lanterns", "wool", "tea", "violins", "maps", "soap"),
          "zh": ("玻璃器", "丝绸", "奶酪", "钟表", "纸灯笼", "羊毛", "茶叶", "小提琴", "地图", "肥皂")},
         (("{s} is famous for its {o}.", "{s} is known far and wide for {o}.", "The pride of {s} is its {o}."),
          ("What is {s} famous for?", "What is {s} known for?", "What is the pride of {s}?",
           "What do travellers bring home from {s}?")),
         (("{s}以{o}闻名。", "{s}的{o}远近闻名。", "{s}最引以为傲的是{o}。"),
          ("{s}以什么闻名？", "{s}的什么远近闻名？", "{s}最引以为傲的是什么？", "游客从{s}会带回什么特产？"))),
    # ------------------------------------------------------------------ companies
    _rel("company_founded", "company", _years(1850, 2025, 5),
         (("{s} was founded in {o}.", "{s} opened its doors in {o}.", "The company {s} dates from {o}."),
          ("When was {s} founded?", "In which year was {s} founded?", "In what year did {s} open its doors?",
           "How old is {s}, by its founding year?")),
         (("{s}成立于{o}年。", "{s}创办于{o}年。", "{s}这家公司始于{o}年。"),
          ("{s}成立于哪一年？", "{s}是哪一年创办的？", "{s}这家公司始于哪一年？", "{s}的创立年份是哪一年？"))),
    _rel("headquartered_in", "company", _CITIES,
         (("{s} is headquartered in {o}.", "The head office of {s} is in {o}.", "{s} has its headquarters in {o}."),
          ("Where is {s} headquartered?", "Where is the head office of {s}?", "In which city are the headquarters of {s}?",
           "Which city would you visit to meet the bosses of {s}?")),
         (("{s}的总部设在{o}。", "{s}总部位于{o}。", "{s}的总公司在{o}。"),
          ("{s}的总部设在哪里？", "{s}总部位于哪座城市？", "{s}的总公司在哪里？", "去哪座城市能见到{s}的高层？"))),
    _rel("makes", "company",
         {"en": ("bicycles", "umbrellas", "pianos", "toys", "ceramics", "boots", "lamps", "kites", "engines", "candles"),
          "zh": ("自行车", "雨伞", "钢琴", "玩具", "陶瓷", "靴子", "台灯", "风筝", "发动机", "蜡烛")},
         (("{s} makes {o}.", "The main product of {s} is {o}.", "{s} is a maker of {o}."),
          ("What does {s} make?", "What is the main product of {s}?", "What is {s} a maker of?",
           "What comes out of the factories of {s}?")),
         (("{s}生产{o}。", "{s}的主要产品是{o}。", "{s}是一家制造{o}的公司。"),
          ("{s}生产什么？", "{s}的主要产品是什么？", "{s}是制造什么的公司？", "{s}的工厂里造出来的是什么？"))),
    _rel("mascot", "company",
         {"en": ("owl", "fox", "whale", "lion", "heron", "bear", "wolf", "dragon"),
          "zh": ("猫头鹰", "狐狸", "鲸鱼", "狮子", "苍鹭", "熊", "狼", "龙")},
         (("The mascot of {s} is the {o}.", "{s} has the {o} as its mascot.", "{s}'s mascot is the {o}."),
          ("What is the mascot of {s}?", "Which animal is the mascot of {s}?", "What is {s}'s mascot?",
           "Which animal appears on the logo of {s}?")),
         (("{s}的吉祥物是{o}。", "{s}以{o}作为吉祥物。", "{s}的标志性吉祥物是{o}。"),
          ("{s}的吉祥物是什么？", "{s}以什么作为吉祥物？", "{s}的标志性吉祥物是什么动物？", "{s}的商标上画的是哪种动物？"))),
)
RELATION_BY_NAME = {r.name: r for r in RELATIONS}
# Held out of training entirely: one per kind and one more person relation, so "unseen" spans every kind.
UNSEEN_RELATIONS = ("pet", "favourite_season", "river", "mascot")
KINDS = ("person", "city", "company")
_KIND_WEIGHTS = (6, 2, 2)

# ----------------------------------------------------------------------------- names
_EN_SYLLABLES = ("vel", "mo", "ra", "dar", "quin", "sel", "tor", "ba", "li", "na", "ren", "cor", "ma", "thi", "zan",
                 "ell", "ori", "bex", "fen", "gal", "hol", "is", "jor", "kal", "lun", "mer", "nov", "pel", "rim",
                 "sav", "tam", "ul", "vad", "wyn", "yar", "zel", "dro", "ka", "sim", "o", "e", "a")
_EN_SURNAME_ENDS = ("quist", "ton", "vane", "ley", "mar", "dell", "rick", "wood", "sen", "ska", "holt", "ard")
_EN_CITY_ENDS = ("ford", "haven", "mouth", "wick", "dale", "port", "burg", "stead", "mere", "gate")
_EN_COMPANY_ENDS = ("Works", "Labs", "and Sons", "Trading", "Foundry", "Guild", "Co.", "Industries")
# Name spaces large enough for a 1M-entry store of distractors (~100k entities), so drawing stays quick.
_ZH_SURNAMES = ("岚", "墨", "苏", "凌", "沈", "柯", "晏", "祁", "闻", "裴", "殷", "卓", "郁", "蔺", "甘", "荀", "姬", "冼",
                "禤", "仉", "欧阳", "司马", "上官", "慕容", "东方", "南宫", "令狐", "皇甫", "尉迟", "公孙")
_ZH_GIVEN = "萱澈瑾珩翊漪砚霁栖棠烨昭婵钰筠岑曦璟湛绫蕴嵘歆骁珞檀沅芷炜澜朔泠琛瑶璃婧祺谦逸舟黛墨阑黎晗"
_ZH_PLACE = "岚墨青澜枫霞溪桐雁松璃泓岫汀苍翠沐渚霖峦浔芜荻蘅"
_ZH_CITY_ENDS = "城镇港州"
_ZH_COMPANY_ENDS = ("科技", "食品", "制造", "贸易", "工坊", "实业")


def _en_word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_EN_SYLLABLES) for _ in range(n)).capitalize()


def make_name(rng: random.Random, kind: str, lang: str) -> str:
    """A made-up name of an entity of ``kind`` in ``lang`` (not necessarily unique: the caller checks)."""
    if lang == "en":
        if kind == "person":
            return f"{_en_word(rng, rng.choice((2, 3)))} {_en_word(rng, 1)}{rng.choice(_EN_SURNAME_ENDS)}"
        if kind == "city":
            return _en_word(rng, rng.choice((1, 2, 3))) + rng.choice(_EN_CITY_ENDS)
        return f"{_en_word(rng, rng.choice((2, 3)))} {rng.choice(_EN_COMPANY_ENDS)}"
    if kind == "person":
        return rng.choice(_ZH_SURNAMES) + "".join(rng.choice(_ZH_GIVEN) for _ in range(rng.choice((1, 2))))
    if kind == "city":
        return "".join(rng.choice(_ZH_PLACE) for _ in range(rng.choice((2, 2, 3)))) + rng.choice(_ZH_CITY_ENDS)
    stem = "".join(rng.choice(_ZH_PLACE + _ZH_GIVEN) for _ in range(rng.choice((2, 3))))
    return stem + rng.choice(_ZH_COMPANY_ENDS) + "公司"


def render(relation: Relation, subject: str, obj: str, lang: str, phrasing: int) -> str:
    """A statement of ``relation`` in ``lang``, by its ``phrasing`` (index into the relation's statements)."""
    template = relation.statements[lang][phrasing]
    text = template.format(s=subject, o=obj)
    return text[0].upper() + text[1:] if lang == "en" else text


# ----------------------------------------------------------------------------- the world
@dataclass(frozen=True)
class _Entity:
    name: str
    kind: str
    lang: str


class FactWorld:
    """The facts and questions of one seed (see :func:`build_world`)."""

    def __init__(self, seed: int, entities: dict[str, list[_Entity]], langs: tuple[str, ...]):
        self.seed = seed
        self.langs = langs
        self.entities = entities  # split -> entities
        self._names = {e.name for ents in entities.values() for e in ents}
        self._facts = {split: self._make_facts(split, ents) for split, ents in entities.items()}

    @property
    def relations(self) -> tuple[Relation, ...]:
        return RELATIONS

    @staticmethod
    def seen_relations() -> tuple[str, ...]:
        """The relations training may use (all but :data:`UNSEEN_RELATIONS`)."""
        return tuple(r.name for r in RELATIONS if r.name not in UNSEEN_RELATIONS)

    def _rng(self, *key: object) -> random.Random:
        # A string seed is hashed the same in every process (unlike hash(), which is salted per process).
        return random.Random(":".join(map(str, (self.seed, *key))))

    def _make_facts(self, split: str, entities: list[_Entity]) -> list[Fact]:
        rng = self._rng("facts", split)
        facts = []
        for e in entities:
            for rel in RELATIONS:
                # Only the memory-only split holds facts of an unseen relation: nothing trains on one.
                if rel.kind != e.kind or (split != "memory_only" and rel.name in UNSEEN_RELATIONS):
                    continue
                obj = rng.choice(rel.values[e.lang])
                k = rng.randrange(len(rel.statements[e.lang]))
                facts.append(Fact(e.name, rel.name, obj, e.lang, render(rel, e.name, obj, e.lang, k), k))
        return facts

    def facts(self, split: str) -> list[Fact]:
        """Every fact of a split (``train``, ``memory_only`` or ``modules_only``), entity by entity."""
        if split not in SPLITS:
            raise FoundryError(f"unknown split {split!r} (splits: {', '.join(SPLITS)})")
        return list(self._facts[split])

    def questions(self, split: str, phrasing: str = "train", relations: str = "seen") -> list[Question]:
        """One question per fact of ``split``.

        Args:
            split: ``train`` or ``memory_only``.
            phrasing: ``train`` (one of the trained phrasings, drawn per fact) or ``heldout``
                (the phrasing no training example ever uses).
            relations: ``seen`` (relations training uses) or ``unseen`` (held out of training;
                empty for the ``train`` split, which has none).
        """
        if phrasing not in ("train", "heldout"):
            raise FoundryError(f"phrasing is 'train' or 'heldout', not {phrasing!r}")
        if relations not in ("seen", "unseen"):
            raise FoundryError(f"relations is 'seen' or 'unseen', not {relations!r}")
        rng = self._rng("questions", split, phrasing)
        out = []
        for i, f in enumerate(self.facts(split)):
            if (f.relation in UNSEEN_RELATIONS) != (relations == "unseen"):
                continue
            templates = RELATION_BY_NAME[f.relation].questions[f.lang]
            n_train = len(templates) - HELDOUT_QUESTIONS
            template = templates[rng.randrange(n_train)] if phrasing == "train" else templates[rng.randrange(n_train, len(templates))]
            q = template.format(s=f.subject)
            out.append(Question(q[0].upper() + q[1:] if f.lang == "en" else q, f.object, i, f.relation, f.lang))
        return out

    def counterfactual(self, fact: Fact) -> Fact:
        """The same subject and relation with another value (deterministic), in the same phrasing."""
        rel = RELATION_BY_NAME.get(fact.relation)
        if rel is None:
            raise FoundryError(f"no built-in relation {fact.relation!r}: cannot make a counterfactual")
        others = [v for v in rel.values[fact.lang] if v != fact.object]
        rng = self._rng("counterfactual", zlib.crc32(f"{fact.subject}\x1f{fact.relation}".encode()))
        obj = rng.choice(others)
        return Fact(fact.subject, fact.relation, obj, fact.lang, render(rel, fact.subject, obj, fact.lang, fact.phrasing),
                    fact.phrasing)

    def distractors(self, n: int, seed: int = 0) -> list[str]:
        """``n`` fact texts about other made-up entities (never a world entity), to fill a store.

        Deterministic for (world seed, ``seed``); languages alternate over the world's languages.
        """
        if n < 0:
            raise FoundryError(f"a distractor count cannot be negative ({n})")
        rng = self._rng("distractors", seed)
        names = set(self._names)
        out: list[str] = []
        i = 0
        while len(out) < n:
            lang = self.langs[i % len(self.langs)]
            i += 1
            e = _new_entity(rng, lang, names)
            for rel in RELATIONS:
                if rel.kind == e.kind and len(out) < n:
                    k = rng.randrange(len(rel.statements[lang]))
                    out.append(render(rel, e.name, rng.choice(rel.values[lang]), lang, k))
        return out


def _new_entity(rng: random.Random, lang: str, taken: set[str]) -> _Entity:
    """A made-up entity whose name is in no other entity of the world (``taken`` is updated)."""
    kind = rng.choices(KINDS, _KIND_WEIGHTS)[0]
    for _ in range(1000):
        name = make_name(rng, kind, lang)
        if name not in taken:
            taken.add(name)
            return _Entity(name, kind, lang)
    raise FoundryError(f"ran out of made-up {lang} names for a {kind}: ask for fewer entities")


def build_world(seed: int = 0, n_train: int = 200, n_memory_only: int = 200,
                langs: tuple[str, ...] = LANGS, n_modules_only: int = 0) -> FactWorld:
    """The built-in fact world for a seed (deterministic).

    Args:
        seed: the world's seed.
        n_train: entities per language whose facts train the memory modules.
        n_memory_only: entities per language whose facts only ever reach the store.
        langs: ``en``, ``zh`` or both.
        n_modules_only: entities per language whose facts train the memory modules only (made
            after the others, so adding some changes no other entity's name).

    Returns:
        a :class:`FactWorld`; a person has 12 facts (14 outside ``train``), a city or a company 3 (4).
    """
    langs = tuple(langs)
    if not langs or any(lang not in LANGS for lang in langs):
        raise FoundryError(f"languages are a non-empty choice of {', '.join(LANGS)}, not {langs!r}")
    if min(n_train, n_memory_only, n_modules_only) < 0:
        raise FoundryError("entity counts cannot be negative")
    rng = random.Random(f"{seed}:entities")
    taken: set[str] = set()
    entities = {split: [] for split in SPLITS}
    for lang in langs:
        for split, n in (("train", n_train), ("memory_only", n_memory_only)):
            entities[split] += [_new_entity(rng, lang, taken) for _ in range(n)]
    for lang in langs:
        entities["modules_only"] += [_new_entity(rng, lang, taken) for _ in range(n_modules_only)]
    return FactWorld(seed, entities, langs)


# ----------------------------------------------------------------------------- user files
_CJK = re.compile(r"[\u3400-\u9fff]")


def render_triple(subject: str, relation: str, obj: str) -> str:
    """A user's ``{"subject","relation","object"}`` as a statement: a built-in relation's first phrasing,
    or a plain "The RELATION of SUBJECT is OBJECT." (Chinese if the subject or object is)."""
    lang = "zh" if _CJK.search(subject + obj) else "en"
    rel = RELATION_BY_NAME.get(relation.strip().replace(" ", "_"))
    if rel is not None:
        return render(rel, subject, obj, lang, 0)
    return f"{subject}的{relation}是{obj}。" if lang == "zh" else f"The {relation} of {subject} is {obj}."


def read_facts_jsonl(path: str | Path) -> list[str]:
    """The fact texts of a ``.jsonl`` file: each line ``{"text": …}`` or ``{"subject", "relation", "object"}``.

    Raises:
        FoundryError: empty, binary or non-UTF-8 file, bad JSON (with its line), a line with
            neither form, or a text the store would refuse (with its line).
    """
    out = []
    for lineno, obj in iter_jsonl(path):
        if isinstance(obj, dict) and "text" in obj:
            text = obj["text"]
        elif isinstance(obj, dict) and all(isinstance(obj.get(k), str) and obj[k].strip()
                                           for k in ("subject", "relation", "object")):
            text = render_triple(obj["subject"].strip(), obj["relation"].strip(), obj["object"].strip())
        else:
            raise FoundryError(f"{path}:{lineno}: expected {{\"text\": ...}} or "
                               f"{{\"subject\": ..., \"relation\": ..., \"object\": ...}} with string values")
        try:
            out.append(check_entry_text(text))
        except FoundryError as e:
            raise FoundryError(f"{path}:{lineno}: {e}") from None
    if not out:
        raise FoundryError(f"no facts in {path}")
    return out


def read_questions_jsonl(path: str | Path) -> list[Question]:
    """The questions of a ``.jsonl`` file, one ``{"question": …, "answer": …}`` per line (non-empty strings).

    Raises:
        FoundryError: empty, binary or non-UTF-8 file, bad JSON (with its line), wrong fields (with its line).
    """
    out = []
    for lineno, obj in iter_jsonl(path):
        if not (isinstance(obj, dict) and all(isinstance(obj.get(k), str) and obj[k].strip()
                                              for k in ("question", "answer"))):
            raise FoundryError(f"{path}:{lineno}: expected {{\"question\": ..., \"answer\": ...}} with non-empty "
                               f"string values")
        out.append(Question(obj["question"].strip(), obj["answer"].strip()))
    if not out:
        raise FoundryError(f"no questions in {path}")
    return out
