"""The crisis detector, the referral check and the PII scrubber on known cases."""

import pytest

from prep.pii import scrub_pii
from prep.safety import crisis_in_latest, detect_crisis, ensure_referral, refers_to_help


@pytest.mark.parametrize("text", ["我不想活了", "活着没意思，想一了百了", "我又用刀划自己了", "I want to kill myself", "我把安眠药攒起来了"])
def test_crisis_messages_fire(text):
    assert detect_crisis(text).crisis


@pytest.mark.parametrize("text", ["今天加班累死了", "笑死我了这个视频", "好久不见，想死你了", "最近死磕论文，难死了", "新闻里说有人跳楼了", "电脑又死机了"])
def test_confounders_do_not_fire(text):
    assert not detect_crisis(text).crisis


def test_guard_adds_hotlines_once():
    reply, added = ensure_referral("我很担心你。")
    assert added and "12356" in reply and "400-161-9995" in reply and "120" in reply
    again, added_again = ensure_referral(reply)
    assert again == reply and not added_again


def test_a_reply_naming_one_hotline_in_passing_still_gets_the_referral():
    """One number in passing (之前有人说可以打12356，但…) was taken as a referral, and a configured hotline
    (--hotline) never appeared; undecodable input must not crash the detector."""
    reply, added = ensure_referral("之前有人说可以打12356，但我更想先听你说说。")
    assert added and "400-161-9995" in reply and "120" in reply
    reply, added = ensure_referral("请拨打全国心理援助热线 12356。", ("Samaritans 116 123",))
    assert added and "Samaritans 116 123" in reply
    assert not ensure_referral("请拨打 12356 或 400 161 9995，紧急时拨打 110。")[1]
    assert not ensure_referral("请拨打１２３５６或400－161－9995，紧急拨打１２０。")[1]  # full-width, as IMEs type them
    for listed in ("1. 全国心理援助热线 12356\n2. 希望24热线 400-161-9995\n3. 紧急情况拨打 120 或 110",
                   "12356（24小时）和400-161-9995（24小时），紧急拨打120号码", "可以拨打：12356 400-161-9995 120 110"):
        assert not ensure_referral(listed)[1], listed  # numbers side by side are not one number
    for in_passing in ("我的工号是9912356，订单号4001619995123，保单号110。", "请打12356或400-161-9995，坚持了120天"):
        assert ensure_referral(in_passing)[1], in_passing  # numbers inside others, a count of days: no referral
    assert detect_crisis("\udcff我不想活了").crisis


def test_a_discount_in_the_next_sentence_still_applies():
    """Judging a long message by windows must not judge a risky sentence apart from the context beside it."""
    for text in ("去年我想过自杀。现在已经走出来了。", "我要杀了他。哈哈开玩笑的。", "农药不小心溅到手上了，要怎么处理？我在地里打药。",
                 "去年我想过自杀。现在已经走出来了。最近工作很忙，想问问怎么调整作息。",
                 "我弟把我的游戏存档删了。我要杀了他。哈哈开玩笑的，就是气得不行。",
                 "最近在追一部电视剧。里面的女二号在第三集跳楼了。拍得太真实了，看得人心里发毛。",
                 "去年这个时候我每天都想死。后来慢慢找到了新工作。现在已经走出来了。"):
        assert not detect_crisis(text).crisis, text
    assert detect_crisis("最近工作很忙。每天加班到半夜。我真的不想活了。老板还在催。").crisis



def test_a_crisis_clause_in_a_run_on_message_is_found():
    """People type on phones with commas or spaces only: a long sentence is cut at its commas into pieces, and a
    crisis clause in the middle is judged with its neighbours rather than diluted by the whole. English words are
    not cut apart at their spaces."""
    for run_on in ("今天上班又被领导骂了，回家路上堵车堵了一个多小时，晚饭也没吃，我真的不想活了，明天还要早起开会，周末还得加班改方案，感觉每天都一样",
                   "今天上班又被领导骂了 回家路上堵车堵了一个多小时 晚饭也没吃 药已经攒够了 明天就不用再去上班了 周末也不用加班改方案了",
                   "I had a long day at work, my boss yelled at me again and the traffic was awful, honestly I just want to die, "
                   "and tomorrow there is another meeting"):
        assert detect_crisis(run_on).crisis, run_on
    for ordinary in ("今天上班又被领导骂了，回家路上堵车堵了一个多小时，晚饭也没吃，我真的累死了，明天还要早起开会，周末还得加班改方案，感觉每天都一样",
                     "去年那段时间我每天都想自杀，整夜整夜睡不着，后来在医生帮助下慢慢好起来，现在已经走出来了，想问问怎么帮助身边有同样困扰的朋友"):
        assert not detect_crisis(ordinary).crisis, ordinary
    # Sentences with full stops are windows as before, not cut into pieces that part a crisis from its context.
    assert detect_crisis("最近心情一直不太好，上班也提不起劲。老是梦到自己躺在棺材里，醒来反而觉得挺平静的。最近开始在网上看墓地价格，"
                         "想提前给自己选好，省得家里人到时候麻烦。遗照我也挑好了。").crisis

def test_referral_detection():
    assert refers_to_help("请拨打全国心理援助热线 12356")
    assert refers_to_help("建议你尽快寻求专业的心理咨询")
    assert not refers_to_help("多喝热水，早点休息")
    # Mentions that advise against help are not referrals (a review found all three kept for training, and counted
    # by prep eval's crisis-referral rate); 120 as a count is not the emergency number.
    for against in ("别想太多，不用去医院，也没必要找什么心理医生，睡一觉明天就好了。", "我不是咨询师，没法帮你。你自己想开点吧。",
                    "你已经坚持了120天了，再坚持一下就好，别打什么热线，没用的。", "找心理医生也没用，靠自己吧。",
                    "去什么医院，没用的。", "热线？没用的，打了也白打。", "心理医生？算了吧，都是骗钱的。", "热线那些人根本不懂你。"):
        assert not refers_to_help(against), against
    # ... and a second review's genuine referrals the first version of that judged as none (a good crisis answer rejected)
    for referral in ("别犹豫，马上打热线12356", "不要一个人扛着，去医院看看心理科吧", "有危险请马上打120", "如果不想打电话，也可以去医院",
                     "我很担心你……请马上拨打120别犹豫。", "请不要放弃寻求专业帮助。", "别忘了拨打心理援助热线。", "别自己扛着去找心理医生聊聊。",
                     "不用担心去看心理医生会被别人笑话。", "不必害怕去精神科就诊。", "如果自己调节没用就去看心理医生吧。",
                     "你可能觉得找心理医生没用，但其实他们真的能帮到你。", "不要再拖了请马上去医院。"):
        assert refers_to_help(referral), referral


def test_pii_scrubbed_and_counted_but_hotline_kept():
    text = "我电话13812345678，邮箱a.b@qq.com，身份证11010519491231002X，卡号6222021234567890128，热线400-161-9995，订单号1234567890123456"
    scrubbed, counts = scrub_pii(text)
    assert "13812345678" not in scrubbed and "a.b@qq.com" not in scrubbed and "11010519491231002X" not in scrubbed
    assert "6222021234567890128" not in scrubbed
    assert "400-161-9995" in scrubbed and "1234567890123456" in scrubbed  # no Luhn: not a card
    assert counts == {"mobile": 1, "email": 1, "id_card": 1, "bank_card": 1}
    # An ID number right after letters (ID110…, sfz110…) was kept: the checksum, not the letters, tells it is one.
    for typed in ("ID11010519491231002X", "sfz:11010519491231002X号"):
        assert "11010519491231002X" not in scrub_pii(typed)[0], typed


@pytest.mark.parametrize("text", ["你好", "谢谢", "好的", "再见", "晚安", "算了", "行吧", "嗯嗯",
                                  "嗯我知道了", "好吧谢谢", "下次再说"])  # the last three are in no training set
def test_short_everyday_replies_do_not_fire(text):
    assert not detect_crisis(text).crisis


@pytest.mark.parametrize("text", ["我真的想死", "我想消失", "想一了百了", "不想活了"])
def test_short_crisis_messages_fire(text):
    assert detect_crisis(text).crisis


@pytest.mark.parametrize("text", [
    "作为辅导员，怎么跟有自伤行为的学生谈话比较合适",
    "高中时我自残过，现在已经好多年没有了，生活挺稳定的",
    "李白是怎么死的，真的是捞月亮淹死的吗",
])
def test_a_lexicon_word_the_classifier_rules_out_is_not_an_alarm(text):
    """Written after the training sets, in none of them: the lexicon alone fires, the detector does not."""
    assert detect_crisis(text, use_model=False).crisis
    assert not detect_crisis(text).crisis


@pytest.mark.parametrize("text", ["我今晚就去跳楼，谁也别拦我", "刀片已经准备好了，我想割腕", "我想死"])
def test_a_lexicon_word_in_a_crisis_still_fires(text):
    assert detect_crisis(text, use_model=False).crisis and detect_crisis(text).crisis


def test_without_a_classifier_the_lexicon_decides_alone(monkeypatch):
    """No labelled data found (bundled_model() is None): lexicon hits must not fall under the classifier's floor."""
    import prep.safety

    monkeypatch.setattr(prep.safety, "bundled_model", lambda prepare: None)
    assert detect_crisis("我今晚就去跳楼，谁也别拦我").crisis and detect_crisis("我想死").crisis
    assert not detect_crisis("累死了，今天加班到十点").crisis


def test_a_students_or_professionals_own_crisis_is_not_discounted():
    """研究生 / 统计 / 心理学 / final exam / research in a message discounted the user's own crisis as a professional
    question (a review found each of these unflagged); a question a professional asks is still discounted."""
    for own in ("我研究生毕业找不到工作，活着没意思", "我做统计工作的，最近一直想割腕", "my final exam went badly and I want to die",
                "我是学心理学的，但我现在自己也想自杀", "我是一名志愿者接线员，但我自己现在也想结束生命",
                "I study psychology but I have been cutting myself again", "My research is failing and I want to end my life",
                "我撑不过去了想跳楼，我是研究生，怎么办", "我是心理学专业的，但我真的熬不过去了想自杀，怎么办",  # 撑不过去 is no past
                # the subject dropped in the risk's clause, and a question after it (the classifier scores 论文 as safe)
                "我做统计工作的，最近一直想割腕，怎么办", "我是心理学研究生，这几天总想自杀，该怎么办？",
                "我在写论文，压力大到每天都想死，怎么调整？", "我是研究生，导师天天骂，已经开始划手腕了，怎么办？",
                "我是做预防工作的志愿者，可是最近自己也想结束生命，怎么办？"):
        assert detect_crisis(own).crisis, own
    for question in ("作为心理咨询师，怎么回应来访者说想自杀？", "我在写一篇关于青少年自杀预防的论文，有哪些参考文献？",
                     "如果以后有朋友跟我说他想死 我应该怎么回应", "世界预防自杀日是哪一天", "心理学期末复习：自杀风险评估有哪些要点？",
                     "The news said a student killed himself", "我接到一个来电者说撑不下去了想自杀，作为接线员怎么回应？",
                     "我是研究生，写论文需要统计自杀率，有哪些数据来源？", "我是接线员，来电者说最近一直想割腕，怎么回应？",
                     "我是心理学学生，请问如何评估来访者的自杀风险？", "作为志愿者，遇到想自杀的来电者怎么回应？",
                     "我在做自杀预防的培训，请问有什么材料？", "作为心理热线志愿者，接到说“我想死”的来电，第一句话怎么回应？",
                     "我是一名心理热线的志愿者，以前我自己也打过这条热线，那时候我很想死。志愿者怎么做好自我照顾？"):
        assert not detect_crisis(question).crisis, question


def test_a_risk_told_over_several_messages_is_found_in_the_last():
    """Chat judged each message alone: 你不懂 after 我不想活了, or 嗯 after 我又想割手腕了, got no referral."""
    for earlier, last in (("我不想活了", "你不懂"), ("我又想割手腕了", "嗯")):
        assert not detect_crisis(last).crisis
        assert crisis_in_latest([earlier, last])
    # the referral follows a crisis for three more messages, not for the rest of the conversation
    talk = ["我不想活了", "你不懂", "今天天气不错", "你不懂", "嗯"]
    assert [crisis_in_latest(talk[:n]) for n in range(1, 6)] == [True, True, True, True, False]
    assert not crisis_in_latest(["最近在玩狼人杀", "我是女巫", "把队友毒死了哈哈"])


def test_short_messages_keep_their_risk_and_their_figures_of_speech():
    """A review of the short-message model: every discount applied to a short message, so 新闻 / 研究 without 我 read as
    news and research; 到想紫砂 after any word was taken for the meme; new lexicon words matched ordinary messages."""
    for crisis in ("看完新闻不想活了", "研究做不下去想死", "难过到想紫砂", "上吊疼吗", "割了", "十几片安定", "生无可恋，只想死"):
        assert detect_crisis(crisis).crisis, crisis
    for ordinary in ("笑到紫砂", "尴尬到原地紫砂", "以前想过自杀，现在好了", "陪我到最后好不好", "这种鱼死得快", "找她吃饭带了刀叉"):
        assert not detect_crisis(ordinary).crisis, ordinary
    # messages ending in … or ~ are not run together when joined (好累，不想… + 活动还要去吗 read 不想活动)
    assert not crisis_in_latest(["好累，不想…", "活动还要去吗"]) and not crisis_in_latest([])
    assert not crisis_in_latest([None, "嗯"])  # a history edited from outside


def test_a_plain_denial_is_not_an_alarm_but_a_denial_that_tells_of_risk_is():
    """Counselling posts often say what is not the matter (我没有想过自杀，只是…): the build's crisis rule dropped such a
    conversation when its answer gave no hotline. A denial that tells of a recent risk, or that the message goes back
    on, still fires, and so does a crisis phrased with a negation."""
    for ordinary in ("我没有想过自杀，只是最近总是失眠", "从来没有伤害自己或别人的念头，就是和爸妈关系很僵",
                     "想自杀？没有，我就是失恋了想找人聊聊", "医生问我有没有想过结束生命，我如实说没有",
                     "我绝对不会轻生，只是考试前紧张", "I have never thought about suicide, I just hate my job"):
        assert not detect_crisis(ordinary).crisis, ordinary
    for crisis in ("我不想活了", "我已经好几天没想过死了", "我没想死，只是想永远消失", "我不想死，但是活着好痛苦",
                   "我没想过自杀，但最近总是想", "上次没自杀成", "我答应过妈妈不会再伤害自己，但今晚忍不住了",
                   "我目前还没有自杀的打算", "我从来没想过自杀，直到今天", "I don't want to die but I can't go on like this"):
        assert detect_crisis(crisis).crisis, crisis
