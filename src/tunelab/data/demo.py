"""Demo datasets that tunelab generates itself, so that the quickstart needs no download.

``support_tickets`` turns free-text customer-support tickets into JSON with fixed fields::

    {"name": "Maria Lopez", "order_id": "ORD-48213", "product": "standing desk",
     "category": "shipping", "urgency": "high"}

The tickets are built from many templates (greetings, name placements, order-number formats, urgency
cues, distracting second products, casual typing) with ``random.Random(seed)`` only, so the same
``n`` and ``seed`` always give the same rows, byte for byte. Every value in the JSON can be read off
the ticket text: the name and the order digits appear verbatim, the product is named, the category
follows from what the ticket asks for and the urgency from explicit cues.

Recipes use them as ``data.path: demo:support_tickets`` (2,000 rows) or ``demo:support_tickets:N``;
:func:`materialize` writes the JSONL file once under ``$TUNELAB_HOME/demo``. From a shell::

    python -m tunelab.data.demo support_tickets --n 2000 --out tickets.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.util.io import atomic_write_text, sha256_file

__all__ = [
    "CATEGORIES", "DEMO_DATASETS", "INSTRUCTION", "PRODUCTS", "URGENCIES", "generate_support_tickets",
    "main", "materialize", "to_jsonl",
]

INSTRUCTION = (
    "Extract JSON with keys name, order_id, product, "
    "category (billing|shipping|technical|account|refund), urgency (low|medium|high). Ticket:"
)

CATEGORIES = ("billing", "shipping", "technical", "account", "refund")
URGENCIES = ("low", "medium", "high")

# product -> what it has that can go wrong (technical tickets pair a product only with fitting problems)
_FEATURES: dict[str, tuple[str, ...]] = {
    "wireless earbuds": ("battery", "bluetooth", "audio", "app", "touch"),
    "noise-cancelling headphones": ("battery", "bluetooth", "audio", "app", "touch"),
    "smart watch": ("battery", "bluetooth", "screen", "app", "touch"),
    "fitness tracker": ("battery", "bluetooth", "screen", "app", "touch"),
    "bluetooth speaker": ("battery", "bluetooth", "audio"),
    "mechanical keyboard": ("usb", "bluetooth", "battery"),
    "wireless mouse": ("usb", "bluetooth", "battery"),
    "4K monitor": ("screen", "usb", "settings"),
    "webcam": ("usb", "app"),
    "standing desk": ("motor", "settings"),
    "espresso machine": ("heat", "settings"),
    "air fryer": ("heat", "wifi", "app", "settings"),
    "blender": ("motor",),
    "robot vacuum": ("battery", "wifi", "app", "motor", "settings"),
    "electric toothbrush": ("battery", "bluetooth", "app"),
    "hair dryer": ("heat", "motor"),
    "smart thermostat": ("wifi", "app", "screen", "touch", "settings"),
    "security camera": ("wifi", "app", "settings"),
    "e-reader": ("battery", "screen", "wifi", "touch"),
    "portable charger": ("battery", "usb"),
    "desk lamp": ("touch", "usb"),
    "laptop stand": (),
    "office chair": (),
    "yoga mat": (),
    "hiking backpack": (),
}
PRODUCTS = tuple(_FEATURES)

_FIRST_NAMES = (
    "Maria", "Tom", "Priya", "James", "Aisha", "Wei", "Yuki", "Carlos", "Olivia", "Mohammed", "Fatima",
    "Liam", "Sofia", "Hiroshi", "Amara", "Lucas", "Emma", "Raj", "Ngozi", "Ahmed", "Elena", "Daniel",
    "Mei", "Kwame", "Ana", "Noah", "Ingrid", "Mateo", "Zara", "Dmitri", "Leila", "Samuel", "Hannah",
    "Arjun", "Chloe", "Tariq", "Sakura", "Diego", "Grace", "Oluwaseun", "Isabella", "Kenji", "Nadia",
    "Jonas", "Lucia", "Omar", "Freya", "Ravi", "Camila", "Ethan", "Anh", "Mehmet", "Sara", "Jin",
    "Beatriz", "Patrick", "Ayesha", "Marco", "Lena", "Tomasz", "Chiara", "Kofi", "Rosa", "Hugo",
    "Ji-woo", "Nikolai", "Imani", "Sean", "Valentina", "Ali", "Astrid", "Rahul", "Julia", "Thabo",
    "Mia", "Andrés", "Zoë", "Siobhan", "Yusuf", "Bongani", "Catalina", "Erik", "Farah", "Gabriel",
)
_LAST_NAMES = (
    "Lopez", "Natarajan", "Berg", "Smith", "Okafor", "Zhang", "Tanaka", "Garcia", "Müller", "Haddad",
    "Kowalski", "Rossi", "Nguyen", "Kim", "Patel", "Johnson", "O'Brien", "Fernandes", "Ivanov", "Yilmaz",
    "Mensah", "Dubois", "Andersson", "Papadopoulos", "Sato", "Khan", "Silva", "Murphy", "Schmidt",
    "Novak", "Cohen", "Singh", "Chen", "Wang", "Adeyemi", "Hernandez", "Martin", "Rahman", "Lindqvist",
    "Moreau", "Costa", "Petrov", "Nakamura", "Brown", "Wilson", "Gupta", "Horvat", "Jensen", "Mwangi",
    "Abdullah", "Reyes", "Takahashi", "Osei", "Kaur", "Ferrari", "Walsh", "Virtanen", "Dlamini",
    "Park", "Tran", "Kaya", "Popescu", "Nowak", "Hansen", "MacLeod", "van der Berg", "Santos",
    "Ahmadi", "Bianchi", "Kovács", "Oyelaran", "Iyer", "Lefebvre", "Pereira", "Suzuki", "Baker",
    "Eze", "Sánchez", "Fischer", "Lim",
)
_MIDDLE_INITIALS = "ABCDEFGHJKLMNPRSTW"
_AGENT_NAMES = ("Sam", "Alex", "Jordan", "Taylor", "Morgan", "Casey", "Robin", "Jamie")

# ------------------------------------------------------------------------------------- ticket bodies
# Placeholders: {product}, {order}/{Order} (an order noun phrase, with or without the id), {amount},
# {days}, {code}. Bodies are urgency-neutral: urgency comes only from the cue sentences below.

# Technical problems, each with the product features it needs (any one of them; none: any electronics).
_TECHNICAL: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("My {product} won't turn on anymore. I charged it overnight and nothing happens.", ("battery",)),
    ("The {product} keeps disconnecting from Bluetooth every few minutes.", ("bluetooth",)),
    ("After the latest firmware update the {product} is stuck on a blinking light.", ("app",)),
    ("The app for the {product} crashes every time I open the settings page.", ("app",)),
    ("The battery in my {product} drains within an hour, even when I'm not using it.", ("battery",)),
    ("My {product} makes a loud clicking noise when it starts up.", ()),
    ("I can't get the {product} onto my Wi-Fi. I've reset it {days} times already.", ("wifi",)),
    ("The {product} shows error code E{code} on startup, and it's not in the manual.", ()),
    ("The display on the {product} flickers constantly.", ("screen",)),
    ("The {product} gets really hot after ten minutes of use.", ("battery", "usb")),
    ("I followed the setup guide, but my laptop doesn't recognise the {product}.", ("usb",)),
    ("The {product} switches itself off at random.", ()),
    ("Since {order} arrived, the {product} has never charged past 50%.", ("battery",)),
    ("The buttons on the {product} stopped responding.", ()),
    ("My {product} won't pair with my new phone, although it worked fine with the old one.", ("bluetooth",)),
    ("The sound from the {product} keeps cutting out on one side.", ("audio",)),
    ("A factory reset didn't help: the {product} still freezes after a few seconds.", ("app", "screen")),
    ("The {product} doesn't show up in the companion app anymore.", ("app",)),
    ("How do I update the firmware on the {product}? The steps in the box don't match what I see.", ("app",)),
    ("The {product} works on battery but not when it's plugged in.", ("battery",)),
    ("The touch controls on the {product} trigger on their own.", ("touch",)),
    ("The {product} lost all its saved settings after a power cut.", ("settings",)),
    ("I keep getting a 'device not supported' message when I set up the {product}.", ("app", "usb")),
    ("The {product} has been really slow to respond since last week.", ("app", "screen")),
    ("The light on the {product} is flashing red and I don't know what that means.", ()),
    ("The {product} loses its connection whenever I move to another room.", ("wifi", "bluetooth")),
    ("My {product} beeps every few minutes for no reason.", ()),
    ("The {product} won't charge with the cable that came with it.", ("battery",)),
    ("The {product} stops halfway through and has to be restarted every time.", ("motor", "heat")),
    ("The {product} from {order} is stuck in a reboot loop.", ("app",)),
    ("The {product} stopped syncing with my phone after I updated the app.", ("app",)),
    ("Every time I turn on the {product} it resets to factory settings.", ("settings",)),
    ("The {product} shows error E{code} and then shuts down after a couple of minutes.", ()),
    ("The {product} makes a grinding noise and then stops.", ("motor",)),
    ("The {product} doesn't heat up properly anymore.", ("heat",)),
)

_BODIES: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged twice for {order}. The {product} only cost {amount} but my card shows two payments.",
        "My credit card statement shows {amount} for the {product}, but the price at checkout was lower.",
        "The promo code I entered on {order} didn't apply, so I paid full price for the {product}.",
        "The invoice for the {product} lists the wrong billing address. Can you send a corrected one?",
        "My payment for the {product} failed at checkout, yet the money still left my account.",
        "Why was I charged {amount} for shipping on {order}? The {product} was supposed to ship free.",
        "There is a duplicate charge from you on my bank statement, both for the same {product}.",
        "Can you explain the extra {amount} fee on {order}? I only bought the {product}.",
        "I need a proper VAT invoice for the {product} so my company can reimburse me.",
        "The price of the {product} dropped {days} days after I bought it. Do you do price adjustments?",
        "My card was charged for the {product} before it even shipped, which I thought you didn't do.",
        "I paid for the {product} with a gift card, but my credit card was charged as well.",
        "The sales tax on {order} looks wrong: {amount} for a single {product}?",
        "I chose the monthly payment plan for the {product}, but the full amount was taken at once.",
        "The receipt for {order} says I bought two of the {product}. I only ordered one.",
        "My bank flagged a charge of {amount} from you. I think it's for the {product}, but I'm not sure.",
        "I was billed in the wrong currency for the {product}, so the bank added conversion fees.",
        "The store credit on my account wasn't used for {order}; the whole {product} went on my card.",
        "The card I used to pay for the {product} has expired. How do I update the payment method?",
        "Checkout said {amount} for the {product}, but the confirmation email shows a higher total.",
        "I keep getting billed for an extended warranty on the {product} that I never signed up for.",
        "There's a pending authorization of {amount} for the {product} that hasn't cleared in {days} days.",
        "The invoice attached to {order} is missing my company name, and I need it for the {product}.",
        "I was charged full price for the {product} even though it was on sale that day.",
        "Is it possible to split the payment for the {product} across two cards?",
        "The installment for the {product} came out of my account twice this month.",
        "My employee discount wasn't applied to the {product} when I paid.",
        "I think I was overcharged on {order}: the {product} was listed cheaper than the {amount} I paid.",
        "Could I get an itemized receipt for the {product}? The one I got only shows the total.",
        "The payment for the {product} ended up on my partner's card instead of mine.",
        "I got a payment reminder for the {product}, but I paid for it {days} days ago.",
        "My statement shows {amount} from a company name I don't recognise. Is that the {product}?",
        "Quick billing question: the {product} on {order} was charged {amount} instead of the listed price.",
    ),
    "shipping": (
        "{Order} still hasn't arrived. Tracking for the {product} hasn't updated in {days} days.",
        "The {product} was marked as delivered, but there's nothing at my door.",
        "I need to change the delivery address for {order} before the {product} ships.",
        "The courier left the {product} with a neighbour I've never met.",
        "The box with the {product} arrived crushed, although the item itself looks okay.",
        "Tracking says {order} is stuck at the depot. Where is my {product}?",
        "I paid for express shipping on the {product}, and it's been {days} days.",
        "Only half of {order} showed up. The {product} was not in the box.",
        "The {product} went to my old address instead of the new one I saved.",
        "When will the {product} ship? {Order} has said 'processing' for {days} days.",
        "The driver tried to deliver the {product} while I was out and now I can't reschedule.",
        "The tracking link for the {product} doesn't work at all.",
        "{Order} was split into two shipments, and the one with the {product} never came.",
        "The {product} has been sitting in customs for {days} days.",
        "I got someone else's parcel instead of my {product}.",
        "Can I pick up the {product} from a store instead of having it delivered?",
        "The estimated delivery date for the {product} keeps getting pushed back.",
        "I was told the {product} would arrive on Tuesday, and that was {days} days ago.",
        "The carrier says the address on {order} is incomplete and is sending the {product} back to you.",
        "Can you ship the {product} to my office instead of my home address?",
        "I got a delivery notification for the {product} for a city I don't even live in.",
        "My {product} was delivered to the wrong apartment in my building.",
        "The parcel with the {product} was left outside in the rain.",
        "Can you add a delivery note to {order}? The {product} should go to the back door.",
        "No shipping confirmation for the {product} yet, and I ordered it {days} days ago.",
        "The {product} came by standard post even though I picked next-day delivery.",
        "Tracking shows the {product} bouncing between two warehouses.",
        "The courier wants an extra {amount} import fee before they'll hand over the {product}.",
        "Could you hold {order} until I'm back home? I don't want the {product} sitting on the porch.",
        "Tracking says delivery of the {product} was attempted at 3am, which can't be right.",
        "Which courier has {order}? I can't find any information about the {product} shipment.",
        "The {product} arrived, but the parcel was opened and resealed with someone else's tape.",
        "{Order} shows delivered to a pickup point I never chose, and I can't find the {product} there.",
    ),
    "technical": tuple(template for template, _ in _TECHNICAL),
    "account": (
        "I can't log in to check on the {product} I ordered. The password reset email never arrives.",
        "I'd like to change the email address on the account I used to buy the {product}.",
        "My account got locked after too many login attempts, so I can't see my {product} order.",
        "Someone else may have access to my account: there's a {product} in my history I didn't buy.",
        "Please delete my account and my personal data. I only made it to buy the {product}.",
        "I lost my phone, so I can't get past two-factor login to register my {product}.",
        "I made two accounts by mistake and want to merge them. One has my {product} order on it.",
        "My account page shows an old phone number and won't let me edit it. I need it for the {product}.",
        "I can't see the {product} in my order history, even though I bought it with this account.",
        "How do I stop the marketing emails? I only signed up to register my {product}.",
        "The warranty page for the {product} says my account doesn't exist, but I log in with it daily.",
        "I changed my surname recently and need it updated on my account, where I bought the {product}.",
        "My loyalty points vanished from my account right after I bought the {product}.",
        "The site logs me out every time I try to look at {order} for the {product}.",
        "I got a security alert about a login from another country, right after buying the {product}.",
        "I want to add my partner as a second user so they can manage the {product} too.",
        "My account says it was deactivated, which I never asked for. My {product} warranty is on it.",
        "I can't save a new address in my account settings; it keeps showing the one from the {product}.",
        "The verification code you text me never comes, so I can't register the {product}.",
        "I forgot which email I signed up with. I bought a {product} from you last year.",
        "I'd like a copy of all the data you hold about me, including the {product} purchase.",
        "My profile shows someone else's name, and their {product} order is in my history.",
        "I keep getting password reset emails I didn't request since I ordered the {product}.",
        "I made an account at checkout for the {product} but never got the activation email.",
        "The 'remember me' box doesn't work; I log in every single time to check the {product}.",
        "I want to switch my account from personal to business. The {product} was bought for work.",
        "My account got mixed up with my dad's: I see his {product} order in my history.",
        "I can't change my password. The form says my current one is wrong, but it isn't. ({product} buyer)",
        "Your site says my email is already in use, but I never made an account, only bought a {product}.",
        "Signing in with Google just loops back to the login page, so I can't reach my {product} order.",
        "I need to move the registration of my {product} to a new account.",
        "My account settings reset overnight, and the {product} I registered is gone from the list.",
        "The account linked to {order} uses my old work email. Can I change it? It's for the {product}.",
    ),
    "refund": (
        "I returned the {product} {days} days ago and still haven't received my refund.",
        "I'd like a refund for the {product}. It's not what I expected.",
        "The {product} arrived damaged and I want my money back, not a replacement.",
        "Can I get a refund on {order}? I changed my mind about the {product}.",
        "I only got a partial refund of {amount} for the {product}, and I paid more than that.",
        "Please send me a return label so I can send the {product} back for a refund.",
        "The return portal won't let me start a refund for the {product}.",
        "I cancelled {order} before it shipped, but the refund for the {product} never came through.",
        "The {product} stopped working after a week, and I'd like a full refund.",
        "You said my refund for the {product} was processed, but nothing has reached my account.",
        "I'd like to return the {product} for a refund. It's still sealed in the box.",
        "Is the {product} still within the return window? I bought it about {days} weeks ago.",
        "The refund for the {product} went to an old card that I've since closed.",
        "I was refunded for the wrong item. I sent back the {product}, not anything else.",
        "I want to return the {product} because it's too big for my space. How do I get my money back?",
        "The courier collected the {product} for return {days} days ago. When do I get my money?",
        "Could the refund for the {product} be paid as store credit instead of back to my card?",
        "The {product} was a gift and they already had one. Can I return it for a refund?",
        "I was told the refund for the {product} on {order} would take five days. It's been {days}.",
        "Please refund the {product}. It looks nothing like the photos.",
        "Can you refund the shipping cost too? I'm returning the {product} because it's faulty.",
        "I want my money back for the {product}. It broke the first time I used it.",
        "My refund request for the {product} was rejected without any explanation.",
        "I ordered the {product} twice by mistake and want to return one for a refund.",
        "How long does a refund for the {product} usually take?",
        "I sent the {product} back, but tracking shows it never reached your warehouse, so no refund.",
        "I'd like to return the {product} and get the refund on my original payment method.",
        "The replacement {product} has the same problem as the first. I just want a refund now.",
        "The refund for {order} is {amount} short of what I paid for the {product}.",
        "I'm returning the {product} unopened. Please confirm the refund.",
        "The {product} doesn't fit my setup, so I'd like to send it back for a full refund.",
        "Please cancel my order for the {product} and refund me.",
        "{Order} was refunded for the case but not for the {product} itself.",
    ),
}

_ASKS: dict[str, tuple[str, ...]] = {
    "billing": (
        "Please correct the charge.", "Can you check what happened with the payment?",
        "Could someone from billing look at this?", "Please send me an updated invoice.",
        "I'd like the extra charge reversed.", "Please confirm what I actually owe.",
        "Let me know what went wrong with the payment.", "Can you fix the billing on this?",
    ),
    "shipping": (
        "Can you check where the package is?", "Please tell me when it will actually arrive.",
        "Could you contact the courier?", "Can you update the delivery details?",
        "Please send me a tracking link that works.", "Could you arrange a redelivery?",
        "Where is my parcel?", "Can you find out what happened to the delivery?",
    ),
    "technical": (
        "Is there a fix for this?", "Can you help me troubleshoot it?", "Any idea what's wrong?",
        "Please tell me how to get it working again.", "Is this a known issue?",
        "What should I try next?", "Is there a setting I'm missing?", "How do I get it working?",
    ),
    "account": (
        "Can you help me get back into my account?", "Please update my account.",
        "Can you sort out my account settings?", "How do I fix this on my account?",
        "Please confirm once the account is updated.", "Can you check my account?",
        "I just need my account working again.", "Can someone look at my account?",
    ),
    "refund": (
        "Please process my refund.", "When will I get my money back?", "Can you confirm the refund?",
        "I just want my money back.", "Please tell me how to return it.",
        "Please refund me to my original card.", "How do I get my refund?",
        "Can you check on the refund?",
    ),
}

_SUBJECTS: dict[str, tuple[str, ...]] = {
    "billing": ("Subject: charge question", "Subject: billing issue", "Subject: wrong amount"),
    "shipping": ("Subject: where is my parcel", "Subject: delivery problem", "Subject: shipping"),
    "technical": ("Subject: not working", "Subject: device issue", "Subject: help with setup"),
    "account": ("Subject: account problem", "Subject: login issue", "Subject: my account"),
    "refund": ("Subject: refund", "Subject: return request", "Subject: money back"),
}

# ------------------------------------------------------------------------------------- urgency cues

_CUES: dict[str, tuple[str, ...]] = {
    "high": (
        "This is urgent.", "Please sort this out ASAP.", "I need this fixed today.",
        "I need it by Friday for my sister's wedding.", "I have a client demo tomorrow morning, so I need this resolved tonight.",
        "Honestly this is unacceptable and I'm losing my patience.",
        "This is the third time I've contacted you and I'm furious.",
        "I need an answer within the hour.", "Please escalate this immediately.",
        "If this isn't fixed by tomorrow I'm filing a chargeback.",
        "I'm leaving on a trip on Monday and need this sorted before then.",
        "This is really urgent, please respond as soon as possible!", "I can't work until this is fixed, so please hurry.",
        "Absolutely ridiculous. Fix it now.", "I need this resolved before the end of the day.",
        "It's time-sensitive: it's a gift for tomorrow.", "PLEASE respond today.",
        "This is an emergency for my business.", "I'm extremely frustrated and need someone to call me right away.",
        "Urgent!!", "My last ticket was closed without a reply and I am livid.", "I need this done by tonight, no excuses.",
    ),
    "medium": (
        "Could you look into it this week?", "I'd appreciate a reply in the next few days.",
        "It would be nice to get this sorted soon.", "Please let me know the next steps when you can.",
        "Hoping to hear back by early next week.", "It's a bit annoying, but I can manage for now.",
        "Not an emergency, but I'd like it resolved in the next couple of days.",
        "A reply sometime this week would be great.", "I'd like this fixed reasonably soon.",
        "Please get back to me within a few days.", "It's inconvenient, so a fix this week would help.",
        "Sometime before the weekend would be ideal.", "I'd appreciate an update soon.",
        "I'd like to get this resolved within the week if possible.",
        "It's not critical, but it is getting in the way.", "Can someone follow up in the next few days?",
        "I'd rather not wait weeks on this.", "I can wait a few days, but not much longer.",
        "Mildly annoying, would like it sorted soon.", "Would be good to hear back this week.",
    ),
    "low": (
        "No rush, whenever you get a chance.", "This isn't urgent at all.",
        "Take your time, it's not a big deal.", "Just wanted to flag it, no hurry.",
        "Whenever is convenient for you is fine.", "It's low priority on my side.",
        "No need to reply quickly.", "It's only a minor thing, really.",
        "I'm in no hurry, so handle it when you can.", "Not time-sensitive at all.",
        "It can wait until you're less busy.", "Just letting you know for future reference.",
        "Happy to wait, no pressure.", "Nothing urgent.", "Whenever you have a spare moment.",
        "It can wait a couple of weeks, honestly.", "Not a big deal, just thought you should know.",
        "Zero rush on this one.", "Answer at your convenience.", "No urgency here, just tidying up loose ends.",
    ),
}
_CUE_PREFIXES: dict[str, tuple[str, ...]] = {
    "high": ("URGENT:", "URGENT -", "Urgent help needed:", "ASAP please:", "Need help right now!"),
    "medium": ("Hoping for a reply this week:", "Not an emergency, but:", "When you can this week:"),
    "low": ("Low priority:", "No rush on this one:", "Minor thing, no hurry:"),
}

# ---------------------------------------------------------------------------- framing around the body

_GREETINGS = (
    "Hi,", "Hello,", "Hi there,", "Hey,", "Hello support,", "Dear Customer Service,", "Good morning,",
    "Good afternoon,", "Hi team,", "To whom it may concern,", "Dear support team,", "Hiya,", "Greetings,",
    "Hello there,", "Dear Sir or Madam,", "Morning,",
)
_NAME_INTROS = (
    "This is {name}.", "My name is {name}.", "{name} here.", "I'm {name}.", "It's {name} again.",
    "My name's {name}.", "{name} writing in.", "This is {name} from Leeds.", "I'm {name}, a long-time customer.",
    "You're speaking with {name}.",
)
_NAME_MIDDLES = (
    "I'm {name}, by the way.", "The account is under {name}.", "(Name on the order: {name}.)",
    "This is {name} writing, in case that helps.", "You'll find it under the name {name}.",
    "For reference, my name is {name}.", "Account holder: {name}.", "It's all under {name}.",
)
_SIGNATURES = (
    "— {name}", "-- {name}", "Thanks, {name}", "Thank you,\n{name}", "Regards,\n{name}", "Best,\n{name}",
    "Cheers, {name}", "Kind regards, {name}", "Sincerely,\n{name}", "Many thanks,\n{name}", "{name}",
    "Best regards — {name}", "thx, {name}", "Thanks in advance,\n{name}",
)
_FIRST_SIGNOFFS = ("Thanks, {first}", "— {first}", "Cheers,\n{first}", "{first}", "Best, {first}", "Thank you! {first}")
_CLOSINGS = ("Thanks.", "Thank you.", "Thanks in advance.", "Appreciate the help.", "Cheers.", "Thanks!")
_CONTEXT = (
    "I've been a customer since 20{yy}.", "I already checked the FAQ.", "I tried calling but couldn't get through.",
    "I bought it on your website.", "Your chat bot couldn't help.", "I've restarted everything already.",
    "This is my {nth} order with you.", "I ordered it together with a few other things.",
    "I bought it on {month} {dd}.", "My phone number ends in {last4}.",
)
_DISTRACTORS = (
    "I also own the {other} but that's fine.", "(The {other} I bought from you works great, by the way.)",
    "My {other} from you is working perfectly; this is only about the {product}.",
    "I also ordered a {other} last month, no issues there.", "This isn't about the {other}, that one's fine.",
    "I've been happy with the {other} I got from you last year.", "My partner's {other} from your shop is fine.",
)
_ORDER_WITH_ID = (
    "my order #{d}", "my order ORD-{d}", "order #{d}", "order ORD-{d}", "my order (#{d})", "order number {d}",
    "my order number {d}", "order no. {d}", "my order {d}", "my order (ORD-{d})", "order ord-{d}",
)
_ORDER_NO_ID = ("my order", "my recent order", "my last order", "the order")
_ORDER_SENTENCES = (
    "My order number is {d}.", "Order #{d}.", "Order ref: ORD-{d}.", "(order ORD-{d})", "It was order #{d}.",
    "The order number is ORD-{d}.", "For reference, it's order {d}.", "Order no. {d}, in case you need it.",
    "It's ORD-{d}.", "Order: {d}.",
)
_ORDER_HEADS = ("Re: order #{d}", "Re: ORD-{d}", "Order {d} -", "RE: order number {d}")
_MONTHS = ("January", "March", "April", "June", "July", "September", "October", "November")
_NTH = ("second", "third", "fourth", "fifth", "tenth")
_CURRENCIES = ("$", "$", "£", "€")
_NUMBER_WORDS = ("two", "three", "four", "five", "six", "ten")
_TYPO_OPS = ("swap", "drop", "double")


@dataclass(frozen=True)
class _Facts:
    """What a ticket is about: everything its JSON answer holds, plus the distracting extras."""

    name: str
    first: str
    order_digits: str | None
    product: str
    category: str
    urgency: str
    other: str | None
    body: int  # index into _BODIES[category]


# ------------------------------------------------------------------------------------------- sampling


def _sample_name(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    if rng.random() < 0.05:
        return f"{first} {rng.choice(_MIDDLE_INITIALS)}. {last}", first
    return f"{first} {last}", first


def _sample_product(rng: random.Random, category: str, body: int) -> str:
    """Any product, or for a technical problem one that has what the problem needs."""
    if category != "technical":
        return rng.choice(PRODUCTS)
    needs = set(_TECHNICAL[body][1])
    return rng.choice([p for p, has in _FEATURES.items() if has and (not needs or needs & set(has))])


def _sample_facts(rng: random.Random) -> _Facts:
    category = rng.choice(CATEGORIES)
    urgency = rng.choice(URGENCIES)
    name, first = _sample_name(rng)
    body = rng.randrange(len(_BODIES[category]))
    product = _sample_product(rng, category, body)
    p_order = 0.35 if category == "account" else 0.8
    digits = str(rng.randint(10000, 99999)) if rng.random() < p_order else None
    other = rng.choice([p for p in PRODUCTS if p != product]) if rng.random() < 0.2 else None
    return _Facts(name, first, digits, product, category, urgency, other, body)


def _cue(rng: random.Random, urgency: str) -> str:
    return rng.choice(_CUES[urgency])


# ------------------------------------------------------------------------------------------ composing


def _head(rng: random.Random, facts: _Facts, order_at_head: bool) -> tuple[list[str], str | None]:
    """Optional header lines (a subject or an order reference) and an optional greeting."""
    lines = []
    if order_at_head:
        lines.append(rng.choice(_ORDER_HEADS).format(d=facts.order_digits))
    elif rng.random() < 0.12:
        lines.append(rng.choice(_SUBJECTS[facts.category]))
    greeting = None
    if rng.random() < 0.75:
        greeting = f"Hi {rng.choice(_AGENT_NAMES)}," if rng.random() < 0.08 else rng.choice(_GREETINGS)
    return lines, greeting


def _extras(rng: random.Random, facts: _Facts, name_pos: str, distractor: bool) -> list[str]:
    """The optional sentences after the body, in random order."""
    extras = [rng.choice(_NAME_MIDDLES)] if name_pos == "middle" else []
    if rng.random() < 0.5:
        extras.append(rng.choice(_ASKS[facts.category]))
    if rng.random() < 0.25:
        extras.append(rng.choice(_CONTEXT))
    if distractor:
        extras.append(rng.choice(_DISTRACTORS))
    rng.shuffle(extras)
    return extras


def _ending(rng: random.Random, name_pos: str) -> list[str]:
    """Closing words and signature; the full name signs off when it was not given earlier."""
    if name_pos == "end":
        sig = rng.choice(_SIGNATURES)
        bare = sig.startswith(("—", "--", "{"))
        return [rng.choice(_CLOSINGS), sig] if bare and rng.random() < 0.5 else [sig]
    roll = rng.random()
    if roll < 0.45:
        return [rng.choice(_FIRST_SIGNOFFS)]
    return [rng.choice(_CLOSINGS)] if roll < 0.75 else []


def _body(facts: _Facts) -> tuple[str, int, bool]:
    """The body template, its index, and whether the order id still needs a sentence of its own."""
    index = facts.body
    body = _BODIES[facts.category][index]
    needs_order = facts.order_digits is not None and "{order}" not in body.lower()
    return body, index, needs_order


def _place_urgency(rng: random.Random, urgency: str, sentences: list[str], body_at: int) -> None:
    """Insert one urgency cue (sometimes two) before the body, right after it, or at the end."""
    where = rng.choice(("prefix", "after", "end", "end"))
    if where == "prefix":
        cue = rng.choice(_CUE_PREFIXES[urgency]) if rng.random() < 0.5 else _cue(rng, urgency)
        sentences.insert(body_at, cue)
        body_at += 1
    else:
        sentences.insert(body_at + 1 if where == "after" else len(sentences), _cue(rng, urgency))
    if rng.random() < 0.25:
        second = _cue(rng, urgency)
        if second not in sentences:
            sentences.insert(body_at + 1, second)


def _sentences(rng: random.Random, facts: _Facts, name_pos: str, order_pos: str, body: str) -> list[str]:
    """The main text: name intro, body, order reference, extras and urgency cues, as templates."""
    sentences = [rng.choice(_NAME_INTROS)] if name_pos == "start" else []
    distractor_first = facts.other is not None and rng.random() < 0.4
    if distractor_first:
        sentences.append(rng.choice(_DISTRACTORS))
    body_at = len(sentences)
    sentences.append(body)
    order_sentence = rng.choice(_ORDER_SENTENCES).format(d=facts.order_digits)
    if order_pos == "after":
        sentences.append(order_sentence)
    sentences.extend(_extras(rng, facts, name_pos, facts.other is not None and not distractor_first))
    if order_pos == "end":
        sentences.append(order_sentence)
    _place_urgency(rng, facts.urgency, sentences, body_at)
    _pad(rng, facts.category, sentences)
    return sentences


def _pad(rng: random.Random, category: str, sentences: list[str], min_words: int = 26) -> None:
    """Lengthen very short tickets with a request or some context, before the last sentence or after it."""
    pool = [s for s in (*_ASKS[category], *_CONTEXT) if s not in sentences]
    while len(" ".join(sentences).split()) < min_words:
        extra = pool.pop(rng.randrange(len(pool)))
        sentences.insert(len(sentences) - rng.randint(0, 1), extra)


@dataclass
class _Draft:
    """A ticket as templates, before casual typing and filling in the placeholders."""

    head: list[str]
    greeting: str | None
    sentences: list[str]
    ending: list[str]
    meta: dict


def _compose(rng: random.Random, facts: _Facts) -> _Draft:
    name_pos = rng.choices(("start", "middle", "end"), weights=(0.35, 0.25, 0.4))[0]
    body, index, needs_order = _body(facts)
    order_pos = rng.choice(("head", "after", "after", "after", "end")) if needs_order else "body"
    head, greeting = _head(rng, facts, order_pos == "head")
    sentences = _sentences(rng, facts, name_pos, order_pos, body)
    meta = {"template": f"{facts.category}/{index:02d}", "name_position": name_pos, "order_position": order_pos}
    return _Draft(head, greeting, sentences, _ending(rng, name_pos), meta)


# ------------------------------------------------------------------------------------ casual typing


def _typo(rng: random.Random, word: str) -> str:
    i = rng.randrange(1, len(word) - 2)
    op = rng.choice(_TYPO_OPS)
    if op == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == "drop":
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def _add_typos(rng: random.Random, text: str, count: int) -> str:
    """Misspell `count` plain words (never placeholders, numbers or short words)."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 5]
    for i in rng.sample(candidates, min(count, len(candidates))):
        words[i] = _typo(rng, words[i])
    return " ".join(words)


def _casual(rng: random.Random, text: str) -> tuple[str, list[str]]:
    """Sometimes type like a hurried customer: lower case, no apostrophes, 'pls', typos.

    Returns the text and the names of the changes that altered it.
    """
    changes = (
        ("lowercase", 0.12, str.lower),
        ("no_apostrophes", 0.1, lambda t: t.replace("'", "")),
        ("pls", 0.08, lambda t: re.sub(r"\b([Pp])lease\b", r"\1ls", t)),
        ("typos", 0.18, lambda t: _add_typos(rng, t, rng.randint(1, 2))),
    )
    style = []
    for name, p, change in changes:
        if rng.random() < p:
            changed = change(text)
            if changed != text:
                text, style = changed, [*style, name]
    return text, style


# ----------------------------------------------------------------------------------------- rendering


def _after_greeting(greeting: str, first: str, rng: random.Random) -> str:
    """A greeting and the first sentence: on separate lines, or one line ("Hi, this is ...")."""
    if rng.random() < 0.5:
        return f"{greeting}\n{first}"
    if first.startswith("{Order}"):
        first = "{order}" + first[len("{Order}"):]
    elif first[:1].isupper() and (first[1:2].islower() or first[1:2] == " ") and not first.startswith(("I ", "I'm")):
        first = first[0].lower() + first[1:]
    return f"{greeting} {first}"


def _main_text(rng: random.Random, draft: _Draft) -> str:
    """Header lines, then the greeting and the sentences as one paragraph."""
    first, *rest = draft.sentences
    if draft.greeting:
        first = _after_greeting(draft.greeting, first, rng)
    return "\n".join([*draft.head, " ".join([first, *rest])])


def _with_ending(rng: random.Random, text: str, ending: list[str]) -> str:
    for part in ending:
        text += ("\n" if rng.random() < 0.5 else " ") + part
    return text


def _order_phrase(rng: random.Random, digits: str | None) -> str:
    return rng.choice(_ORDER_WITH_ID).format(d=digits) if digits else rng.choice(_ORDER_NO_ID)


def _fill(rng: random.Random, template: str, facts: _Facts) -> str:
    order = _order_phrase(rng, facts.order_digits)
    product = facts.product.title() if rng.random() < 0.08 else facts.product
    days = str(rng.randint(2, 12)) if rng.random() < 0.7 else rng.choice(_NUMBER_WORDS)
    values = {
        "name": facts.name, "first": facts.first, "product": product, "other": facts.other or "",
        "order": order, "Order": order[0].upper() + order[1:], "days": days, "code": rng.randint(10, 99),
        "amount": f"{rng.choice(_CURRENCIES)}{rng.randint(12, 480)}.{rng.choice(('99', '00', '49', '95'))}",
        "yy": f"{rng.randint(10, 23):02d}", "nth": rng.choice(_NTH), "month": rng.choice(_MONTHS),
        "dd": rng.randint(1, 28), "last4": rng.randint(1000, 9999),
    }
    return template.format(**values)


def _render(rng: random.Random, facts: _Facts) -> tuple[str, dict]:
    draft = _compose(rng, facts)
    template, style = _casual(rng, _main_text(rng, draft))
    text = _fill(rng, _with_ending(rng, template, draft.ending), facts)
    return text, {**draft.meta, "style": style}


def _answer(facts: _Facts) -> str:
    return json.dumps({
        "name": facts.name,
        "order_id": f"ORD-{facts.order_digits}" if facts.order_digits else None,
        "product": facts.product,
        "category": facts.category,
        "urgency": facts.urgency,
    }, ensure_ascii=False, separators=(",", ":"))


def generate_support_tickets(n: int, seed: int = 0) -> list[dict]:
    """Synthetic customer-support tickets paired with the JSON a model should extract from them.

    Args:
        n: Number of rows.
        seed: Seed for ``random.Random``; the same ``n`` and ``seed`` give identical rows.

    Returns:
        Rows ``{"messages": [user, assistant], "meta": {...}}``: the user turn is :data:`INSTRUCTION`
        followed by the ticket text, the assistant turn is one line of JSON with the keys ``name``,
        ``order_id`` (``"ORD-<digits>"`` or null), ``product``, ``category`` and ``urgency``, in that
        order. ``meta`` records the category, urgency and how the ticket was built.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        facts = _sample_facts(rng)
        text, meta = _render(rng, facts)
        rows.append({
            "messages": [
                {"role": "user", "content": f"{INSTRUCTION}\n{text}"},
                {"role": "assistant", "content": _answer(facts)},
            ],
            "meta": {"index": i, "category": facts.category, "urgency": facts.urgency,
                     "has_order_id": facts.order_digits is not None, "distractor": facts.other, **meta},
        })
    return rows


# ---------------------------------------------------------------------------------------- materialize

DEMO_DATASETS = {"support_tickets": (generate_support_tickets, 2000)}


def _demo_root() -> Path:
    return Path(os.environ.get("TUNELAB_HOME", Path.home() / ".cache" / "tunelab")) / "demo"


def _parse_name(name: str) -> tuple[str, int]:
    base, _, size = name.removeprefix("demo:").partition(":")
    if base not in DEMO_DATASETS:
        raise TunelabError(f"unknown demo dataset '{name}'", where="data.path", fix="available: demo:support_tickets")
    if not size:
        return base, DEMO_DATASETS[base][1]
    if not size.isdigit() or int(size) < 1:
        raise TunelabError(f"demo dataset size must be a positive integer, got '{size}'", where="data.path",
                           fix=f"use demo:{base} or demo:{base}:N, e.g. demo:{base}:1000")
    return base, int(size)


def to_jsonl(rows: list[dict]) -> str:
    """Rows as JSONL text: UTF-8, one compact JSON object per line."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def materialize(name: str) -> Path:
    """Write a demo dataset to ``$TUNELAB_HOME/demo/<name>-<n>.jsonl`` (once) and return its path.

    Args:
        name: ``support_tickets`` (2,000 rows) or ``support_tickets:N``; a leading ``demo:`` is allowed.

    Returns:
        The JSONL path. The file is rewritten (atomically) only when it is missing or its content differs.

    Raises:
        TunelabError: For an unknown dataset name or a bad size.
    """
    base, n = _parse_name(name)
    generate, _ = DEMO_DATASETS[base]
    text = to_jsonl(generate(n))
    path = _demo_root() / f"{base}-{n}.jsonl"
    if not path.is_file() or sha256_file(path) != hashlib.sha256(text.encode("utf-8")).hexdigest():
        atomic_write_text(path, text)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m tunelab.data.demo support_tickets --n 2000 --out FILE``."""
    parser = argparse.ArgumentParser(prog="python -m tunelab.data.demo", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(DEMO_DATASETS), help="demo dataset")
    parser.add_argument("--n", type=int, default=None, help="number of rows (default: the dataset's size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSONL file (default: the tunelab cache)")
    args = parser.parse_args(argv)
    generate, default_n = DEMO_DATASETS[args.name]
    n = args.n if args.n is not None else default_n
    if n < 1:
        parser.error("--n must be at least 1")
    if args.out is None and args.seed == 0:
        print(materialize(f"{args.name}:{n}"))
        return 0
    out = args.out or _demo_root() / f"{args.name}-{n}-seed{args.seed}.jsonl"
    atomic_write_text(out, to_jsonl(generate(n, seed=args.seed)))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
