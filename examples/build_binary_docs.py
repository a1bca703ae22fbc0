"""Build the binary documents of the sample knowledge base (PDF, DOCX, XLSX).

Run from anywhere:

    python examples/build_binary_docs.py

Writes, relative to this file:

* ``kb/loans/mortgage-terms.pdf``               — «Условия ипотечного кредитования» (reportlab)
* ``kb/security/disputed-transactions.docx``   — «Порядок оспаривания операций» (python-docx)
* ``kb/faq/faq.xlsx``                            — FAQ with a Russian and an English sheet (openpyxl)

The output is deterministic: fixed document dates, reportlab's invariant mode, and ZIP
containers (DOCX/XLSX) rewritten with fixed timestamps, so re-running the script on the same
library versions gives byte-identical files and a clean ``git diff``.

Needs reportlab, python-docx and openpyxl, and the DejaVu Sans TTF for Cyrillic text in the PDF
(``apt-get install -y fonts-dejavu-core`` if it is missing).
"""

from __future__ import annotations

import datetime as dt
import io
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KB = HERE / "kb"
FIXED_DATE = dt.datetime(2025, 9, 1, 9, 0, 0)
ZIP_DATE = (2025, 9, 1, 9, 0, 0)
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))


# --- helpers ------------------------------------------------------------------------------------


def _find_font(name: str) -> Path:
    for d in FONT_DIRS:
        if (d / name).is_file():
            return d / name
    sys.exit(f"{name} not found in {', '.join(map(str, FONT_DIRS))}; install fonts-dejavu-core")


def _normalize_zip(path: Path) -> None:
    """Rewrite an OOXML container with fixed timestamps and fixed core-property dates."""
    stamp = FIXED_DATE.strftime("%Y-%m-%dT%H:%M:%SZ")
    with zipfile.ZipFile(path) as src:
        entries = [(info.filename, src.read(info.filename)) for info in src.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for name, data in entries:
            if name == "docProps/core.xml":
                text = data.decode("utf-8")
                text = re.sub(r"(<dcterms:(?:created|modified)[^>]*>)[^<]*(<)", rf"\g<1>{stamp}\g<2>", text)
                data = text.encode("utf-8")
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            dst.writestr(info, data)
    path.write_bytes(buf.getvalue())


# --- PDF: mortgage terms ------------------------------------------------------------------------

MORTGAGE_RATES = [
    ["Программа", "Ставка", "Первоначальный взнос", "Максимальная сумма"],
    ["Готовое жильё", "от 21,5%", "от 20%", "30 000 000 ₽"],
    ["Новостройка", "от 20,9%", "от 20%", "30 000 000 ₽"],
    ["Семейная ипотека", "6%", "от 20%", "12 000 000 ₽ (Москва, МО, СПб, ЛО);\n6 000 000 ₽ (другие регионы)"],
    [
        "Дальневосточная и\nарктическая ипотека",
        "2%",
        "от 20%",
        "6 000 000 ₽; 9 000 000 ₽ при\nплощади жилья более 60 м²",
    ],
    ["Рефинансирование", "от 20,5%", "—", "30 000 000 ₽, не более\n80% стоимости жилья"],
]

MORTGAGE_SECTIONS: list[tuple[str, list[str]]] = [
    (
        "1. Общие условия",
        [
            "Ипотечный кредит предоставляется на покупку квартиры на вторичном рынке, квартиры в строящемся "
            "или построенном доме от застройщика, а также жилого дома с земельным участком. Сумма кредита — "
            "от 500 000 ₽, срок — от 3 до 30 лет. Валюта кредита — российский рубль.",
            "@table",
            "Ставки указаны для клиентов, оформляющих страхование жизни и здоровья. Окончательная ставка "
            "указывается в кредитном договоре и не меняется в течение всего срока, кроме случаев, описанных "
            "в разделе 2.",
        ],
    ),
    (
        "2. Надбавки и скидки к ставке",
        [
            "• +1 процентный пункт — при отказе от страхования жизни и здоровья "
            "(применяется ко всем программам);",
            "• +0,5 п.п. — если доход подтверждается справкой по форме банка "
            "вместо справки 2-НДФЛ или выписки СФР;",
            "• +1 п.п. — ипотека по двум документам (см. раздел 3);",
            "• −0,3 п.п. — для зарплатных клиентов «Северного Кредита»;",
            "• −0,2 п.п. — при электронной регистрации сделки через банк.",
            "Скидки не применяются к государственным программам «Семейная ипотека» и «Дальневосточная и "
            "арктическая ипотека». Если страхование жизни не продлено на следующий год, ставка повышается "
            "на 1 п.п. со следующего платёжного периода.",
        ],
    ),
    (
        "3. Первоначальный взнос",
        [
            "Минимальный первоначальный взнос по всем программам покупки — 20% стоимости жилья.",
            "Ипотека по двум документам: при первоначальном взносе от 50% доход можно не подтверждать — "
            "достаточно паспорта и СНИЛС. Максимальная сумма кредита в этом случае — 15 000 000 ₽, ставка "
            "повышается на 1 п.п.",
            "Материнский (семейный) капитал можно использовать как часть первоначального взноса; при этом "
            "собственные средства клиента должны составлять не менее 10% стоимости жилья. Также принимаются "
            "жилищные сертификаты и региональные субсидии.",
        ],
    ),
    (
        "4. Требования к заёмщику",
        [
            "• гражданство Российской Федерации;",
            "• возраст от 21 года; на дату последнего платежа — не старше 75 лет;",
            "• стаж на текущем месте работы — от 3 месяцев, общий стаж — от 1 года;",
            "• можно привлечь до 3 созаёмщиков; супруг или супруга становится созаёмщиком обязательно, "
            "если нет брачного договора.",
            "Семейная ипотека доступна семьям, в которых есть ребёнок младше 6 лет или ребёнок-инвалид "
            "младше 18 лет. Дальневосточная и арктическая ипотека — для покупки жилья в регионах Дальнего "
            "Востока и в арктических муниципалитетах (в том числе Архангельской и Мурманской областей): "
            "для супругов младше 36 лет, участников программы «Дальневосточный гектар», педагогов и "
            "медицинских работников.",
        ],
    ),
    (
        "5. Документы",
        [
            "Документы заёмщика и созаёмщиков:",
            "• паспорт гражданина РФ и СНИЛС;",
            "• подтверждение дохода за последние 6 месяцев: справка 2-НДФЛ, выписка из СФР о состоянии "
            "индивидуального лицевого счёта или справка по форме банка;",
            "• копия трудовой книжки, заверенная работодателем, "
            "или сведения о трудовой деятельности (СТД-Р);",
            "• свидетельство о браке или брачный договор (при наличии);",
            "• для семейной ипотеки — свидетельства о рождении детей;",
            "• при использовании материнского капитала — сертификат и справка СФР об остатке средств.",
            "Документы по объекту:",
            "• договор купли-продажи или договор участия в долевом строительстве (ДДУ);",
            "• выписка из ЕГРН — для готового жилья;",
            "• отчёт об оценке от аккредитованного банком оценщика — для готового жилья.",
            "Справку о доходах, выписку СФР и СТД-Р можно загрузить в приложении через Госуслуги — "
            "бумажные копии тогда не нужны.",
        ],
    ),
    (
        "6. Этапы и сроки",
        [
            "1) Заявка в приложении «Северный Кредит Онлайн» или в отделении (Архангельск, ул. Полярная, 12; "
            "Санкт-Петербург, Невский пр., 88; Москва, ул. Покровка, 31).",
            "2) Решение по заявке — до 3 рабочих дней. Одобрение действует 90 календарных дней.",
            "3) Выбор жилья и оценка. Оценку оплачивает клиент: "
            "4 000–8 000 ₽ в зависимости от города и объекта.",
            "4) Проверка объекта банком — до 5 рабочих дней.",
            "5) Подписание договоров в отделении. Расчёты с продавцом — через сервис безопасных расчётов "
            "или аккредитив, бесплатно.",
            "6) Регистрация в Росреестре. Электронная регистрация через банк стоит 9 900 ₽ "
            "и занимает от 1 до 5 рабочих дней; также можно подать документы самостоятельно через МФЦ.",
            "7) Кредит перечисляется продавцу после регистрации права собственности или ДДУ.",
        ],
    ),
    (
        "7. Страхование",
        [
            "Страхование залога (конструктива квартиры или дома) обязательно по закону и оформляется "
            "ежегодно; стоимость — около 0,1–0,2% от остатка долга в год. Страхование жизни и здоровья — "
            "добровольное; при отказе ставка повышается на 1 п.п. Страхование права собственности "
            "(титула) — по желанию клиента. Полис можно оформить в банке или в аккредитованной страховой "
            "компании.",
        ],
    ),
    (
        "8. Погашение",
        [
            "Платежи ежемесячные, равными суммами (аннуитет). Дату платежа клиент выбирает при "
            "подписании договора — с 1 по 28 число.",
            "Досрочное погашение — полное или частичное, без комиссии, с первого дня после выдачи кредита. "
            "Заявление подаётся в приложении не позднее чем за 1 рабочий день до даты погашения. При "
            "частичном погашении клиент выбирает: уменьшить срок или ежемесячный платёж. Материнский "
            "капитал можно направить на досрочное погашение.",
            "За просрочку платежа начисляется неустойка в размере ключевой ставки Банка России на дату "
            "заключения договора (в процентах годовых) от суммы просроченного платежа.",
            "Справку об уплаченных процентах для налогового вычета можно бесплатно получить в приложении.",
        ],
    ),
]


def build_mortgage_pdf(out: Path) -> None:
    from reportlab import rl_config

    rl_config.invariant = 1  # fixed document ID and creation date

    from reportlab.lib import colors
    from reportlab.lib.enums import TA_LEFT
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.platypus import (
        BaseDocTemplate,
        Frame,
        PageTemplate,
        Paragraph,
        Spacer,
        Table,
        TableStyle,
    )

    pdfmetrics.registerFont(TTFont("DejaVuSans", str(_find_font("DejaVuSans.ttf"))))
    pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(_find_font("DejaVuSans-Bold.ttf"))))

    body = ParagraphStyle(
        "body", fontName="DejaVuSans", fontSize=10, leading=14, alignment=TA_LEFT, spaceAfter=5
    )
    h1 = ParagraphStyle("h1", fontName="DejaVuSans-Bold", fontSize=17, leading=22, spaceAfter=6)
    h2 = ParagraphStyle(
        "h2", fontName="DejaVuSans-Bold", fontSize=12.5, leading=16, spaceBefore=10, spaceAfter=5
    )
    small = ParagraphStyle("small", parent=body, fontSize=8.5, leading=11, textColor=colors.grey)
    cell = ParagraphStyle("cell", parent=body, fontSize=9, leading=12, spaceAfter=0)
    cell_b = ParagraphStyle("cell_b", parent=cell, fontName="DejaVuSans-Bold")

    def footer(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont("DejaVuSans", 8)
        canvas.drawString(20 * mm, 12 * mm, "АО «Северный Кредит» · severny-credit.example/loans/mortgage")
        canvas.drawRightString(190 * mm, 12 * mm, f"Стр. {doc.page}")
        canvas.restoreState()

    story = [
        Paragraph("Условия ипотечного кредитования", h1),
        Paragraph(
            "АО «Северный Кредит». Условия действуют с 1 сентября 2025 года. "
            "https://severny-credit.example/loans/mortgage",
            small,
        ),
        Spacer(1, 4 * mm),
    ]
    for heading, paragraphs in MORTGAGE_SECTIONS:
        story.append(Paragraph(heading, h2))
        for text in paragraphs:
            if text == "@table":
                rows = [
                    [Paragraph(c.replace("\n", "<br/>"), cell_b if i == 0 else cell) for c in row]
                    for i, row in enumerate(MORTGAGE_RATES)
                ]
                table = Table(rows, colWidths=[42 * mm, 24 * mm, 38 * mm, 66 * mm], repeatRows=1)
                table.setStyle(
                    TableStyle(
                        [
                            ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
                            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dfe8f1")),
                            ("VALIGN", (0, 0), (-1, -1), "TOP"),
                        ]
                    )
                )
                story += [table, Spacer(1, 3 * mm)]
            else:
                story.append(Paragraph(text, body))

    doc = BaseDocTemplate(
        str(out),
        pagesize=A4,
        leftMargin=20 * mm,
        rightMargin=20 * mm,
        topMargin=18 * mm,
        bottomMargin=20 * mm,
        title="Условия ипотечного кредитования",
        author="АО «Северный Кредит»",
        subject="Ипотека",
        creator="examples/build_binary_docs.py",
    )
    frame = Frame(doc.leftMargin, doc.bottomMargin, doc.width, doc.height, id="body")
    # onPageEnd, not onPage: the footer is drawn after the body, so text extraction reads it last.
    doc.addPageTemplates([PageTemplate(id="page", frames=[frame], onPageEnd=footer)])
    doc.build(story)


# --- DOCX: disputed transactions ----------------------------------------------------------------

DISPUTE_FEES = [
    ["Услуга", "Север Классик, Север Кэшбэк, Молодёжная", "Север Премиум", "Кредитная «Северное сияние»"],
    ["Подача и рассмотрение заявления", "0 ₽", "0 ₽", "0 ₽"],
    ["Запрос копии чека или документа по операции у банка продавца", "300 ₽", "0 ₽", "300 ₽"],
    ["Повторное рассмотрение (арбитраж) по инициативе клиента после отказа", "1 500 ₽", "0 ₽", "1 500 ₽"],
    ["Перевыпуск карты при компрометации", "0 ₽", "0 ₽", "0 ₽"],
    ["Выписка по операциям для полиции или суда", "0 ₽", "0 ₽", "0 ₽"],
]


def build_disputes_docx(out: Path) -> None:
    from docx import Document
    from docx.shared import Pt

    doc = Document()
    props = doc.core_properties
    props.title = "Порядок оспаривания операций по картам"
    props.author = "АО «Северный Кредит»"
    props.last_modified_by = "АО «Северный Кредит»"
    props.subject = "Оспаривание операций"
    props.keywords = "chargeback; оспаривание; спорная операция"
    props.created = FIXED_DATE
    props.modified = FIXED_DATE
    props.revision = 1
    doc.styles["Normal"].font.name = "Arial"
    doc.styles["Normal"].font.size = Pt(11)

    def bullets(items: list[str]) -> None:
        for item in items:
            doc.add_paragraph(item, style="List Bullet")

    def numbered(items: list[str]) -> None:
        for item in items:
            doc.add_paragraph(item, style="List Number")

    doc.add_heading("Порядок оспаривания операций по картам", level=1)
    doc.add_paragraph(
        "АО «Северный Кредит». Редакция от 1 сентября 2025 года. https://severny-credit.example/help/disputes"
    )
    doc.add_paragraph(
        "Если по вашей карте прошла операция, с которой вы не согласны, подайте заявление на её "
        "оспаривание. Банк проверит операцию, при необходимости обратится в банк продавца через "
        "платёжную систему (процедура chargeback) и сообщит вам результат."
    )

    doc.add_heading("Когда можно оспорить операцию", level=2)
    bullets(
        [
            "операцию вы не совершали (карта или её данные оказались у посторонних);",
            "одна покупка списана дважды;",
            "списанная сумма отличается от суммы в чеке;",
            "оплаченный товар не получен или услуга не оказана, а продавец не возвращает деньги;",
            "продавец подтвердил возврат, но деньги не поступили в течение 30 дней;",
            "банкомат не выдал наличные полностью или частично.",
        ]
    )
    doc.add_paragraph(
        "По спорам о товарах и услугах сначала обратитесь к продавцу: банк может помочь, только если "
        "продавец отказал или не ответил. Сохраните переписку с продавцом."
    )

    doc.add_heading("Сроки подачи заявления", level=2)
    bullets(
        [
            "Операция, которую вы не совершали: сообщите банку как можно скорее, не позднее дня, "
            "следующего за днём получения уведомления об операции. Сначала заблокируйте карту в приложении "
            "или по телефону 8 800 250-47-47.",
            "Споры с продавцом (двойное списание, товар не получен, возврат не пришёл) и банкомат не выдал "
            "деньги: не позднее 120 календарных дней с даты операции, а если товар должен был прийти позже — "
            "с ожидаемой даты получения.",
        ]
    )

    doc.add_heading("Как подать заявление", level=2)
    numbered(
        [
            "Если операцию совершили без вас — заблокируйте карту.",
            "В приложении откройте «История», выберите операцию и нажмите «Оспорить». "
            "Заявление можно также подать в любом отделении с паспортом.",
            "Опишите ситуацию и приложите документы.",
            "Вы получите номер заявления вида SC-2025-000000 — по нему можно узнать статус в чате.",
        ]
    )

    doc.add_heading("Какие документы приложить", level=2)
    bullets(
        [
            "чек, квитанцию или скриншот заказа;",
            "переписку с продавцом и подтверждение отмены заказа или возврата;",
            "чек банкомата, если он был напечатан;",
            "при мошенничестве — талон-уведомление из полиции (номер КУСП).",
        ]
    )

    doc.add_heading("Сроки рассмотрения", level=2)
    doc.add_paragraph(
        "Банк рассматривает заявление в течение 30 календарных дней по операциям в России и в течение "
        "60 календарных дней по трансграничным операциям (совершённым за рубежом или в иностранных "
        "интернет-магазинах). Если банку продавца нужно больше времени, мы сообщим об этом."
    )
    doc.add_paragraph(
        "По кредитной карте «Северное сияние» спорная сумма на время рассмотрения не учитывается при "
        "расчёте минимального платежа, и проценты на неё не начисляются."
    )

    doc.add_heading("Результат рассмотрения", level=2)
    doc.add_paragraph(
        "О решении банк сообщает push-уведомлением и письменным ответом в разделе «Справки и документы» "
        "приложения. Если решение принято в вашу пользу, деньги зачисляются на счёт карты в течение 5 "
        "рабочих дней после решения. Если в возврате отказано, в ответе указывается причина. Не "
        "согласны с решением — вы можете запросить повторное рассмотрение (арбитраж) или подать жалобу "
        "в порядке, описанном в документе «Порядок рассмотрения обращений и жалоб»."
    )

    doc.add_heading("Стоимость услуг", level=2)
    table = doc.add_table(rows=len(DISPUTE_FEES), cols=len(DISPUTE_FEES[0]))
    table.style = "Table Grid"
    for r, row in enumerate(DISPUTE_FEES):
        for c, value in enumerate(row):
            cell = table.cell(r, c)
            cell.text = value
            if r == 0:
                for run in cell.paragraphs[0].runs:
                    run.bold = True
    doc.add_paragraph(
        "Плата за повторное рассмотрение возвращается, если в итоге решение принято в пользу клиента."
    )

    doc.add_heading("Когда оспаривание не поможет", level=2)
    bullets(
        [
            "вы сами подтвердили операцию кодом или перевели деньги по просьбе третьего лица — в этом "
            "случае обратитесь в полицию;",
            "списание по подписке, которую вы не отменили у продавца, — сначала отмените подписку;",
            "переводы через СБП и по номеру карты другому человеку — их можно вернуть только с согласия "
            "получателя.",
        ]
    )

    buf = io.BytesIO()
    doc.save(buf)
    out.write_bytes(buf.getvalue())
    _normalize_zip(out)


# --- XLSX: FAQ (ru + en) ------------------------------------------------------------------------

FAQ_RU = [
    (
        "Можно ли потратить материнский капитал на ипотеку?",
        "Да. Материнский капитал можно использовать как часть первоначального взноса (собственные "
        "средства при этом — не менее 10% стоимости жилья) или для погашения действующей ипотеки. "
        "Заявление подаётся в СФР через Госуслуги; справку о задолженности по кредиту для СФР закажите в "
        "приложении — бесплатно, за 1 рабочий день.",
        "Ипотека",
    ),
    (
        "Как получить налоговый вычет по ипотеке?",
        "При упрощённом порядке банк сам передаёт сведения об уплаченных процентах в ФНС — достаточно "
        "подтвердить вычет на Госуслугах или в личном кабинете налогоплательщика. Если подаёте декларацию "
        "3-НДФЛ самостоятельно, закажите справку об уплаченных процентах в приложении — бесплатно.",
        "Ипотека",
    ),
    (
        "Сколько действует одобрение по ипотеке?",
        "Решение по заявке принимается до 3 рабочих дней. Одобрение действует 90 календарных дней — за это "
        "время нужно выбрать жильё и выйти на сделку.",
        "Ипотека",
    ),
    (
        "Можно ли пополнить вклад «Надёжный»?",
        "Нет, вклад «Надёжный» не пополняется и не допускает частичного снятия. Если планируете "
        "добавлять деньги, выберите вклад «Пополняемый» (общая сумма до 10 000 000 ₽) или накопительный "
        "счёт «Копилка».",
        "Вклады",
    ),
    (
        "Продлевается ли вклад автоматически?",
        "Да, по окончании срока вклад продлевается на тот же срок по ставке, действующей на дату "
        "продления. Автопродление можно отключить в приложении.",
        "Вклады",
    ),
    (
        "Можно ли открыть вклад на ребёнка?",
        "Да. На ребёнка младше 14 лет вклад открывает родитель в отделении со свидетельством о рождении "
        "ребёнка. С 14 лет подросток может открыть вклад сам по паспорту.",
        "Вклады",
    ),
    (
        "Что будет, если пропустить платёж по кредиту?",
        "На сумму просрочки начисляется неустойка 20% годовых, а с 6-го дня просрочки сведения передаются "
        "в бюро кредитных историй. Если платить сложно, позвоните в банк заранее — возможно, подойдут "
        "кредитные каникулы.",
        "Кредиты",
    ),
    (
        "Как вернуть страховку по кредиту?",
        "В течение 30 календарных дней после оформления подайте заявление об отказе от страховки в "
        "приложении или в отделении — премия вернётся полностью. Ставка по кредиту при этом повысится до "
        "ставки без страхования, указанной в договоре.",
        "Кредиты",
    ),
    (
        "Как изменить дату платежа по кредиту?",
        "В приложении: «Кредиты» — кредит — «Изменить дату платежа». Новую дату можно выбрать с 1 по 28 "
        "число; менять дату можно не чаще одного раза в 12 месяцев. Услуга бесплатная.",
        "Кредиты",
    ),
    (
        "Что такое ПСК?",
        "ПСК — полная стоимость кредита в процентах годовых. Она включает проценты и обязательные платежи "
        "по кредиту. ПСК указывается в квадратной рамке в правом верхнем углу первой страницы индивидуальных "
        "условий договора.",
        "Кредиты",
    ),
]

FAQ_EN = [
    (
        "Can I use my Severny Credit card abroad?",
        "Mir cards are accepted only in a limited number of countries; the UnionPay version of Sever Premium "
        "is accepted more widely. Check in the app (Cards — card — Where the card works). Cash withdrawals "
        "abroad cost 2% (min 300 ₽) for Classic and Cashback cards and 1% (min 150 ₽) for Premium.",
        "Cards",
    ),
    (
        "How do I switch the mobile app to English?",
        "Open Profile (Профиль) — Settings (Настройки) — Language (Язык) and choose English. "
        "The app restarts in English.",
        "App",
    ),
    (
        "How can I get a bank reference letter in English for a visa?",
        "Order it in the app (More — Certificates and documents) or at a branch. It costs 500 ₽ and is "
        "ready in 3 business days.",
        "Documents",
    ),
    (
        "Can I pay with my phone?",
        "Apple Pay and Google Pay are not supported. On Android phones with NFC you can pay with Mir Pay; "
        "on iPhone you can pay by SBP QR code in the app.",
        "Cards",
    ),
    (
        "My visa or residence permit was renewed. What should I do?",
        "Bring the new document to any branch or upload a photo of it in the app chat within 7 days. "
        "Otherwise the bank may restrict outgoing transfers.",
        "Accounts",
    ),
    (
        "How can I send money to my family in Kazakhstan?",
        "By card number in the app (Payments — Abroad by card number): 1% fee, minimum 99 ₽, up to "
        "300 000 ₽ per month. You can also send a SWIFT transfer in KZT: 0.5%, minimum 1 500 ₽.",
        "Transfers",
    ),
    (
        "Is my money insured?",
        "Yes. Deposits and accounts of individuals, including foreign citizens, are insured by the Deposit "
        "Insurance Agency (ASV) up to 1 400 000 ₽ per bank, including interest.",
        "Deposits",
    ),
    (
        "Can a foreigner get a loan or a mortgage?",
        "No. Consumer loans, mortgages and the credit card are available only to Russian citizens. "
        "Deposits, the Kopilka savings account, currency exchange and transfers are available to foreign "
        "customers.",
        "Loans",
    ),
]


def build_faq_xlsx(out: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font
    from openpyxl.worksheet.worksheet import Worksheet

    wb = Workbook()
    wb.properties.creator = "АО «Северный Кредит»"
    wb.properties.title = "FAQ — Северный Кредит"
    wb.properties.created = FIXED_DATE
    wb.properties.modified = FIXED_DATE

    def fill(ws: Worksheet, header: tuple[str, str, str], rows: list[tuple[str, str, str]]) -> None:
        ws.append(list(header))
        for row in rows:
            ws.append(list(row))
        for c in ws[1]:
            c.font = Font(bold=True)
        for row in ws.iter_rows(min_row=2):
            for c in row:
                c.alignment = Alignment(wrap_text=True, vertical="top")
        ws.column_dimensions["A"].width = 45
        ws.column_dimensions["B"].width = 90
        ws.column_dimensions["C"].width = 14
        ws.freeze_panes = "A2"

    ru = wb.active
    ru.title = "FAQ ru"
    fill(ru, ("Вопрос", "Ответ", "Категория"), FAQ_RU)
    en = wb.create_sheet("FAQ en")
    fill(en, ("Question", "Answer", "Category"), FAQ_EN)

    buf = io.BytesIO()
    wb.save(buf)
    out.write_bytes(buf.getvalue())
    _normalize_zip(out)


def main() -> None:
    targets = [
        (KB / "loans" / "mortgage-terms.pdf", build_mortgage_pdf),
        (KB / "security" / "disputed-transactions.docx", build_disputes_docx),
        (KB / "faq" / "faq.xlsx", build_faq_xlsx),
    ]
    for path, build in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        build(path)
        print(f"wrote {path.relative_to(HERE)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
