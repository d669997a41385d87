"""A labelled synthetic corpus for the filter benchmark, the same for every run of one seed.

Each sample is a few sentences in one of five languages (en, nl, de, fr, es) with
checksum-valid values of the entity types the filters detect, and decoys that a
good detector leaves alone: numbers with invalid checksums, order, invoice and
version numbers, dates without a birth context, timestamps, UUIDs, commit hashes.
"""

from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass, field

LANGUAGES = ("en", "nl", "de", "fr", "es")


@dataclass
class Sample:
    """A text and its gold spans (entity, start, end)."""

    text: str
    language: str
    spans: list[tuple[str, int, int]] = field(default_factory=list)

    def as_json(self) -> str:
        return json.dumps({"text": self.text, "language": self.language, "spans": self.spans})


# --- values -------------------------------------------------------------------

FIRST = ["jan", "anna", "pieter", "maria", "lukas", "sophie", "carlos", "lucia", "tom", "emma"]
LAST = ["jansen", "de-vries", "mueller", "schmidt", "dupont", "martin", "garcia", "lopez", "smith"]
DOMAINS = ["example.com", "mail.example.nl", "firma.de", "societe.fr", "empresa.es", "corp.co.uk"]


def luhn_check_digit(body: str) -> str:
    total = 0
    for position, char in enumerate(reversed(body)):
        value = int(char)
        if position % 2 == 0:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return str((10 - total % 10) % 10)


def digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(count))


def grouped(text: str, size: int = 4, sep: str = " ") -> str:
    return sep.join(text[i : i + size] for i in range(0, len(text), size))


def email(rng: random.Random) -> str:
    local = rng.choice(
        [
            f"{rng.choice(FIRST)}.{rng.choice(LAST)}",
            f"{rng.choice(FIRST)}{rng.randint(1, 99)}",
            f"{rng.choice(FIRST)[0]}.{rng.choice(LAST)}+news",
        ]
    )
    return f"{local}@{rng.choice(DOMAINS)}"


def phone(rng: random.Random, language: str) -> str:
    d = lambda n: digits(rng, n)  # noqa: E731
    formats = {
        "en": [
            lambda: f"({rng.randint(2, 9)}{d(2)}) {rng.randint(2, 9)}{d(2)}-{d(4)}",
            lambda: f"+1 {rng.randint(2, 9)}{d(2)} {rng.randint(2, 9)}{d(2)} {d(4)}",
            lambda: f"+44 20 {d(4)} {d(4)}",
            lambda: f"07{d(3)} {d(6)}",
        ],
        "nl": [
            lambda: f"+31 6 {d(8)}",
            lambda: f"06-{d(8)}",
            lambda: f"020-{d(7)}",
            lambda: f"+31 (0)20 {d(3)} {d(4)}",
        ],
        "de": [lambda: f"+49 30 {d(7)}", lambda: f"030 {d(7)}", lambda: f"0171 {d(7)}"],
        "fr": [
            lambda: f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
            lambda: f"01 {d(2)} {d(2)} {d(2)} {d(2)}",
            lambda: f"06 {d(2)} {d(2)} {d(2)} {d(2)}",
        ],
        "es": [lambda: f"+34 6{d(2)} {d(3)} {d(3)}", lambda: f"6{d(2)} {d(3)} {d(3)}"],
    }
    return rng.choice(formats[language])()


_BBAN = {
    "NL": lambda rng: "".join(rng.choice("ABINRSTU") for _ in range(4)) + digits(rng, 10),
    "DE": lambda rng: digits(rng, 18),
    "GB": lambda rng: "".join(rng.choice("BCLMNW") for _ in range(4)) + digits(rng, 14),
    "FR": lambda rng: digits(rng, 21) + digits(rng, 2),
    "ES": lambda rng: digits(rng, 20),
    "BE": lambda rng: digits(rng, 12),
}
_IBAN_COUNTRY = {"en": "GB", "nl": "NL", "de": "DE", "fr": "FR", "es": "ES"}


def iban_check_digits(country: str, bban: str) -> str:
    number = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{98 - int(number) % 97:02d}"


def iban(rng: random.Random, language: str, valid: bool = True) -> str:
    country = rng.choice([_IBAN_COUNTRY[language], _IBAN_COUNTRY[language], "BE", "DE"])
    bban = _BBAN[country](rng)
    check = iban_check_digits(country, bban)
    if not valid:
        check = f"{(int(check) + rng.randint(1, 9)) % 100:02d}"
    compact = country + check + bban
    return grouped(compact) if rng.random() < 0.6 else compact


def payment_card(rng: random.Random, valid: bool = True) -> str:
    prefix, length = rng.choice(
        [("4", 16), ("5" + str(rng.randint(1, 5)), 16), ("37", 15), ("6011", 16)]
    )
    body = prefix + digits(rng, length - len(prefix) - 1)
    check = luhn_check_digit(body)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    number = body + check
    if length == 15:
        return rng.choice([f"{number[:4]} {number[4:10]} {number[10:]}", number])
    return rng.choice([grouped(number), grouped(number, sep="-"), number])


def us_ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def uk_nino(rng: random.Random) -> str:
    while True:
        prefix = rng.choice("ABCEGHJKLMNOPRSTWXYZ") + rng.choice("ABCEGHJKLMNPRSTWXYZ")
        if prefix not in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}:
            break
    number = digits(rng, 6)
    suffix = rng.choice("ABCD")
    if rng.random() < 0.5:
        return f"{prefix} {number[:2]} {number[2:4]} {number[4:]} {suffix}"
    return prefix + number + suffix


def nl_bsn(rng: random.Random, valid: bool = True) -> str:
    while True:
        body = digits(rng, 8)
        total = sum(int(c) * w for c, w in zip(body, range(9, 1, -1), strict=True))
        last = total % 11
        if last < 10:
            break
    if not valid:
        last = (last + rng.randint(1, 9)) % 10
    return body + str(last)


def iso7064_check(body: str) -> str:
    product = 10
    for char in body:
        total = (int(char) + product) % 10 or 10
        product = (total * 2) % 11
    return str((11 - product) % 10)


def de_tax_id(rng: random.Random, valid: bool = True) -> str:
    while True:
        chosen = rng.sample(string.digits, 9)
        chosen.append(rng.choice(chosen))
        rng.shuffle(chosen)
        body = "".join(chosen)
        if body[0] != "0":
            break
    check = iso7064_check(body)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    number = body + check
    return (
        f"{number[:2]} {number[2:5]} {number[5:8]} {number[8:]}" if rng.random() < 0.3 else number
    )


def ip_address(rng: random.Random) -> str:
    if rng.random() < 0.75:
        first = rng.choice([10, 172, 192, 81, 145, 203])
        return ".".join(str(part) for part in [first, *(rng.randint(0, 255) for _ in range(3))])
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(rng.randint(2, 4))]
    return "2001:db8:" + ":".join(groups[:-1]) + "::" + groups[-1]


_MONTHS = {
    "en": ["January", "March", "May", "August", "October", "December"],
    "nl": ["januari", "maart", "mei", "augustus", "oktober", "december"],
    "de": ["Januar", "März", "Mai", "August", "Oktober", "Dezember"],
    "fr": ["janvier", "mars", "mai", "août", "octobre", "décembre"],
    "es": ["enero", "marzo", "mayo", "agosto", "octubre", "diciembre"],
}


def date(rng: random.Random, language: str, year: int) -> str:
    day, month = rng.randint(1, 28), rng.randint(1, 12)
    name = rng.choice(_MONTHS[language])
    forms = {
        "en": [f"{day} {name} {year}", f"{name} {day}, {year}", f"{year}-{month:02d}-{day:02d}"],
        "nl": [f"{day:02d}-{month:02d}-{year}", f"{day} {name} {year}"],
        "de": [f"{day:02d}.{month:02d}.{year}", f"{day}. {name} {year}"],
        "fr": [f"{day:02d}/{month:02d}/{year}", f"{day} {name} {year}"],
        "es": [f"{day:02d}/{month:02d}/{year}", f"{day} de {name} de {year}"],
    }
    return rng.choice(forms[language])


def _token(rng: random.Random, alphabet: str, count: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(count))


def secret(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    kind = rng.randrange(7)
    if kind == 0:
        return "AKIA" + _token(rng, string.ascii_uppercase + string.digits, 16)
    if kind == 1:
        return "ghp_" + _token(rng, alnum, 36)
    if kind == 2:
        return f"xoxb-{digits(rng, 11)}-{digits(rng, 12)}-{_token(rng, alnum, 24)}"
    if kind == 3:
        return "sk_live_" + _token(rng, alnum, 24)
    if kind == 4:
        return "AIza" + _token(rng, alnum + "_-", 35)
    if kind == 5:

        def part(data: dict[str, object]) -> str:
            raw = json.dumps(data, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")

        header = part({"alg": "HS256", "typ": "JWT"})
        payload = part({"sub": digits(rng, 8), "iat": rng.randint(1_600_000_000, 1_800_000_000)})
        return f"{header}.{payload}.{_token(rng, alnum + '_-', 43)}"
    return _token(rng, alnum, rng.randint(28, 40))


# --- sentences ------------------------------------------------------------------

TEMPLATES: dict[str, dict[str, list[str]]] = {
    "en": {
        "email": ["Please send the contract to {v} before Friday.", "Her address is {v}, I think."],
        "phone": ["You can reach me on {v} after five.", "Call the front desk at {v}."],
        "iban": ["Transfer the deposit to IBAN {v} please.", "My account is {v}."],
        "paymentCard": ["I paid with card {v} yesterday.", "The card number is {v}, expiry soon."],
        "usSSN": ["His social security number is {v}.", "SSN on file: {v}."],
        "ukNINO": ["My National Insurance number is {v}.", "NI number {v} was updated."],
        "nlBSN": ["The Dutch BSN {v} belongs to the tenant."],
        "deTaxID": ["Her German tax ID is {v}."],
        "ipAddress": ["The login came from {v} last night.", "Whitelist {v} on the firewall."],
        "dateOfBirth": [
            "The patient was born on {v}.",
            "Date of birth: {v}.",
            "DOB {v}, verified.",
        ],
        "secret": ["Use the key {v} for the staging API.", "The token is {v} do not share."],
    },
    "nl": {
        "email": ["Stuur de offerte naar {v} voor vrijdag.", "Mijn e-mailadres is {v}."],
        "phone": ["Bel mij op {v} na vijf uur.", "Het nummer van de balie is {v}."],
        "iban": ["Maak het bedrag over naar {v} graag.", "Rekeningnummer: {v}."],
        "paymentCard": ["Ik heb betaald met creditcard {v}."],
        "usSSN": ["Het Amerikaanse SSN is {v}."],
        "ukNINO": ["Zijn Britse NI-nummer is {v}."],
        "nlBSN": ["Mijn BSN is {v}.", "Burgerservicenummer {v} staat in het dossier."],
        "deTaxID": ["Het Duitse fiscale nummer is {v}."],
        "ipAddress": ["De aanvraag kwam van {v} gisteren."],
        "dateOfBirth": ["Hij is geboren op {v}.", "Geboortedatum: {v}."],
        "secret": ["Gebruik de sleutel {v} voor de test."],
    },
    "de": {
        "email": ["Bitte schicken Sie das an {v} bis Freitag.", "Meine E-Mail ist {v}."],
        "phone": ["Sie erreichen mich unter {v} ab fünf.", "Die Zentrale hat die Nummer {v}."],
        "iban": ["Bitte überweisen Sie auf {v} bis Monatsende.", "IBAN: {v}."],
        "paymentCard": ["Ich habe mit der Karte {v} bezahlt."],
        "usSSN": ["Die amerikanische SSN lautet {v}."],
        "ukNINO": ["Die britische NI-Nummer ist {v}."],
        "nlBSN": ["Die niederländische BSN ist {v}."],
        "deTaxID": ["Meine Steuer-ID ist {v}.", "Steuerliche Identifikationsnummer {v} liegt vor."],
        "ipAddress": ["Der Zugriff kam von {v} heute Nacht."],
        "dateOfBirth": ["Sie ist geboren am {v} in Köln.", "Geburtsdatum: {v}."],
        "secret": ["Der Schlüssel {v} gilt nur für Tests."],
    },
    "fr": {
        "email": ["Envoyez le dossier à {v} avant vendredi.", "Mon adresse est {v}."],
        "phone": ["Appelez-moi au {v} après cinq heures.", "Le standard répond au {v}."],
        "iban": ["Virez le montant sur {v} s'il vous plaît.", "Mon IBAN est {v}."],
        "paymentCard": ["J'ai payé avec la carte {v} hier."],
        "usSSN": ["Le SSN américain est {v}."],
        "ukNINO": ["Son numéro NI britannique est {v}."],
        "nlBSN": ["Le BSN néerlandais est {v}."],
        "deTaxID": ["Son identifiant fiscal allemand est {v}."],
        "ipAddress": ["La connexion venait de {v} cette nuit."],
        "dateOfBirth": ["Elle est née le {v} à Lyon.", "Date de naissance : {v}."],
        "secret": ["La clé {v} sert aux tests."],
    },
    "es": {
        "email": ["Envíe el contrato a {v} antes del viernes.", "Mi correo es {v}."],
        "phone": ["Puede llamarme al {v} por la tarde.", "El teléfono de la oficina es {v}."],
        "iban": ["Transfiera el importe a {v} por favor.", "Mi IBAN es {v}."],
        "paymentCard": ["Pagué con la tarjeta {v} ayer."],
        "usSSN": ["El SSN estadounidense es {v}."],
        "ukNINO": ["Su número NI británico es {v}."],
        "nlBSN": ["El BSN neerlandés es {v}."],
        "deTaxID": ["Su número fiscal alemán es {v}."],
        "ipAddress": ["El acceso vino de {v} anoche."],
        "dateOfBirth": ["Nacido el {v} en Sevilla.", "Fecha de nacimiento: {v}."],
        "secret": ["La clave {v} es solo para pruebas."],
    },
}

DECOY_TEMPLATES: dict[str, list[str]] = {
    "en": [
        "Order {order} shipped on {date}.",
        "We upgraded to version {version} at {time}.",
        "Invoice {invoice} of {amount} is due on {date}.",
        "Request {uuid} failed; see commit {sha}.",
        "Customer number {bad_bsn} and reference {bad_card} were rejected.",
        "The old account {bad_iban} is closed.",
        "Ticket {ticket} was logged at {timestamp}.",
    ],
    "nl": [
        "Bestelling {order} is verzonden op {date}.",
        "Factuur {invoice} van {amount} vervalt op {date}.",
        "Klantnummer {bad_bsn} is onbekend.",
        "Versie {version} draait sinds {timestamp}.",
    ],
    "de": [
        "Bestellung {order} wurde am {date} versandt.",
        "Rechnung {invoice} über {amount} ist am {date} fällig.",
        "Die Vorgangsnummer {bad_tax} ist ungültig.",
        "Version {version} läuft seit {timestamp}.",
    ],
    "fr": [
        "La commande {order} est partie le {date}.",
        "La facture {invoice} de {amount} est due le {date}.",
        "La référence {bad_card} a été refusée.",
        "La version {version} tourne depuis {timestamp}.",
    ],
    "es": [
        "El pedido {order} salió el {date}.",
        "La factura {invoice} de {amount} vence el {date}.",
        "La cuenta {bad_iban} está cerrada.",
        "La versión {version} funciona desde {timestamp}.",
    ],
}

FILLER: dict[str, list[str]] = {
    "en": [
        "Thanks for the quick reply.",
        "Let me know if anything is unclear.",
        "Could you summarise the main points of this message for the team?",
        "We discussed the planning in yesterday's meeting and agreed on the next steps.",
        "The customer would like an answer before the end of the week.",
    ],
    "nl": [
        "Bedankt voor je snelle reactie.",
        "Laat maar weten als iets onduidelijk is.",
        "Kun je de belangrijkste punten van dit bericht samenvatten voor het team?",
        "We hebben de planning gisteren besproken en de volgende stappen afgesproken.",
    ],
    "de": [
        "Vielen Dank für die schnelle Antwort.",
        "Melden Sie sich, wenn etwas unklar ist.",
        "Können Sie die wichtigsten Punkte dieser Nachricht für das Team zusammenfassen?",
        "Wir haben die Planung gestern besprochen und die nächsten Schritte vereinbart.",
    ],
    "fr": [
        "Merci pour votre réponse rapide.",
        "Dites-moi si quelque chose n'est pas clair.",
        "Pouvez-vous résumer les points principaux de ce message pour l'équipe ?",
        "Nous avons discuté du planning hier et convenu des prochaines étapes.",
    ],
    "es": [
        "Gracias por la respuesta rápida.",
        "Avíseme si algo no está claro.",
        "¿Puede resumir los puntos principales de este mensaje para el equipo?",
        "Ayer hablamos de la planificación y acordamos los siguientes pasos.",
    ],
}


def decoy_values(rng: random.Random, language: str) -> dict[str, str]:
    return {
        "order": rng.choice([f"{rng.randint(2019, 2025)}-{digits(rng, 6)}", f"#{digits(rng, 6)}"]),
        "invoice": f"INV-{rng.randint(2019, 2025)}-{digits(rng, 5)}",
        "version": f"{rng.randint(1, 12)}.{rng.randint(0, 30)}.{rng.randint(0, 20)}",
        "date": date(rng, language, rng.randint(2019, 2026)),
        "time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
        "timestamp": rng.choice(
            [
                f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}"
                f":{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
                f"{rng.randint(1, 28):02d}-{rng.randint(1, 12):02d}-2024 {rng.randint(0, 23):02d}"
                f":{rng.randint(0, 59):02d}",
            ]
        ),
        "amount": rng.choice(
            [f"€ {rng.randint(1, 9)}.{digits(rng, 3)},{digits(rng, 2)}", f"${digits(rng, 3)}.00"]
        ),
        "uuid": "-".join(_token(rng, "0123456789abcdef", n) for n in (8, 4, 4, 4, 12)),
        "sha": _token(rng, "0123456789abcdef", 40),
        "ticket": f"TCK-{digits(rng, 7)}",
        "bad_bsn": nl_bsn(rng, valid=False),
        "bad_tax": de_tax_id(rng, valid=False),
        "bad_card": payment_card(rng, valid=False),
        "bad_iban": iban(rng, language, valid=False),
    }


def value(rng: random.Random, entity: str, language: str) -> str:
    makers = {
        "email": lambda: email(rng),
        "phone": lambda: phone(rng, language),
        "iban": lambda: iban(rng, language),
        "paymentCard": lambda: payment_card(rng),
        "usSSN": lambda: us_ssn(rng),
        "ukNINO": lambda: uk_nino(rng),
        "nlBSN": lambda: nl_bsn(rng),
        "deTaxID": lambda: de_tax_id(rng),
        "ipAddress": lambda: ip_address(rng),
        "dateOfBirth": lambda: date(rng, language, rng.randint(1940, 2005)),
        "secret": lambda: secret(rng),
    }
    return makers[entity]()


def sample(rng: random.Random) -> Sample:
    language = rng.choice(LANGUAGES)
    parts: list[str] = []
    spans: list[tuple[str, int, int]] = []
    position = 0
    for _ in range(rng.randint(4, 10)):
        roll = rng.random()
        if roll < 0.35:
            entity = rng.choice(sorted(TEMPLATES[language]))
            template = rng.choice(TEMPLATES[language][entity])
            found = value(rng, entity, language)
            head = template.split("{v}")[0]
            start = position + len(head)
            spans.append((entity, start, start + len(found)))
            sentence = template.replace("{v}", found)
        elif roll < 0.6:
            sentence = rng.choice(DECOY_TEMPLATES[language]).format(**decoy_values(rng, language))
        else:
            sentence = rng.choice(FILLER[language])
        parts.append(sentence)
        position += len(sentence) + 1
    return Sample(" ".join(parts), language, spans)


def corpus(count: int = 1000, seed: int = 20261129) -> list[Sample]:
    """`count` samples; the same list for the same seed."""
    rng = random.Random(seed)
    return [sample(rng) for _ in range(count)]


PROSE = [
    "The quarterly review covered the roadmap, the hiring plan and the office move.",
    "Most of the team agreed that the new process saves time once people get used to it.",
    "We should write down the decisions so that newcomers understand why things are as they are.",
    "The customer asked for a summary of the changes in plain language.",
    "After lunch the workshop continued with a discussion about testing and release habits.",
    "Nobody remembered who had booked the meeting room, so we moved to the kitchen.",
    "The draft is long, but the structure is clear and the examples help a lot.",
    "Please review the proposal and tell me which parts need more detail.",
    "It rained all morning, and the trains were late again because of a signal fault.",
    "A good explanation starts with the problem, not with the solution.",
]


def clean_prompts(count: int = 200, size: int = 4096, seed: int = 7) -> list[str]:
    """Prompts of about `size` characters of ordinary English without personal data."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        words: list[str] = []
        length = 0
        while length < size:
            sentence = rng.choice(PROSE)
            words.append(sentence)
            length += len(sentence) + 1
        prompts.append(" ".join(words)[:size])
    return prompts
