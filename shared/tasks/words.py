"""A list of common English words (lower case a-z, distinct) for generated word sorting.

Written for this project; many words share their first letters (care, carry, cart, case, ...)
so that sorting needs more than the first letter.
"""

from __future__ import annotations

_TEXT = """
    able about above accept across action active actor adapt admit adult advice afford afraid
    after again agent agree ahead alarm album alert alike alive allow alone along already alter
    amount angle angry animal annual answer anxiety apple apply april arena argue arise armor
    army arrive arrow artist aside asleep aspect assist attach attempt attend august author
    autumn avoid awake award aware badge baker balance ball banana band bank barrel basic basket
    battle beach bean bear beauty become before begin behind belief bell belt bench berry
    better beyond bicycle bird birth bitter black blade blanket blind block blood blossom board
    boat body bone bonus book border borrow bottle bottom bounce brain branch brave bread break
    breeze brick bridge brief bright bring broad broken brother brown brush bubble bucket budget
    build bullet bundle burden butter button cabin cable camera camp canal candle candy canvas
    capital captain carbon card care career careful cargo carpet carry cart case castle casual
    catch cattle cause ceiling cellar center chain chair chalk chance change chapter charge
    charm chart cheap check cheese cherry chest chicken chief child choice circle city claim
    class clean clear clever climb clock close cloud coach coast cocoa coffee coin cold collect
    color column comfort common copper corn corner cotton couch count country couple course
    cousin cover crack craft crane crash cream credit crowd crown cruel crystal cube culture
    curve cushion custom cycle daily damage dance danger daring dark daughter dawn debate decade
    decide deep degree delay deliver demand dentist depth desert design desk detail device
    diamond diary diesel dinner direct doctor dolphin donkey door double dragon drama drawer
    dream dress drift drink drive drum during eager eagle early earth easily east echo edge
    effort eight elbow elder electric element eleven empty enable endless energy engine enjoy
    enough enter entire equal escape evening event exact example exile exit expand expect
    extra fabric face factor fairy faith false family famous fancy farm fashion father fault
    feather february fence festival fever field figure final finger finish fire first fish
    flag flame flavor fleet flight float floor flower fluid focus forest forget fork fortune
    forward fossil frame fresh friend frost fruit funny future galaxy garden garlic gather
    gentle giant ginger giraffe glad glass globe glove goat golden good gossip grain grape
    grass gravity great green grid group guard guess guitar habit hammer hand happy harbor hard
    harvest hazard health heart heavy height hello helmet hidden history hobby holiday hollow
    honey hope horizon horse hospital hotel hour house human humor hungry hunter hurry ice idea
    image impact income index indoor infant inner insect inside invite iron island ivory jacket
    jaguar jelly jewel journey judge juice jungle junior justice kettle kernel kitchen kitten
    knife label ladder lake lamp language large laser later laugh lawn layer leader leaf learn
    leather lemon letter level liberty library light limit linen lion liquid little lizard
    lobster local logic lonely lucky lumber lunar lunch machine magic magnet mammal manage
    mango mansion maple marble margin market master matter meadow medal melody member memory
    mercy metal middle midnight mineral mirror mixture model moment monkey month moral morning
    mother motion motor mountain mouse movie muscle museum music mystery narrow nation nature
    needle nephew nerve never noble normal north notice novel number nurse object ocean october
    office olive onion open orange orbit order organ oven owner oxygen oyster paddle page palace
    panel paper parade parent parrot party patch path patient pattern peace peanut pencil people
    pepper perfect person piano picnic picture pilot pioneer planet plastic plate player pocket
    poem poet polar pond portion potato powder power praise present pretty price pride prince
    print prison private profit proud public pulse pumpkin puppet purple puzzle pyramid quarter
    queen quick quiet quote rabbit radar radio rain random rapid rather raven reason record
    region remote repair report rescue result ribbon rice river road robot rocket roof rough
    round royal rubber rumor saddle safety sail salad salmon salt sample sand satisfy sauce
    scale scarf school science scissors screen season second secret select seven shadow shallow
    shelf shell shelter shield shift shine ship shirt shoulder shovel signal silent silver
    simple singer sister skill sleep slender slogan small smile smooth snake soap soccer socket
    soft soldier solid solve sorrow sound south space spare speak spider spirit splendid spoon
    sport spring square stable stadium staff stage stairs stamp stand star state steam steel
    stone storm story street strong student style subject sugar summer sunny supper supply
    surface swallow sweet swift symbol table tackle talent target teacher temple tender tennis
    theater theory thunder ticket tiger timber tired toast today token tomato tongue topic
    torch tower toy tractor traffic train travel treasure tribe trophy truck trumpet tunnel
    turkey turtle twelve twenty umbrella uncle under unique update upper urban useful valley
    valve velvet venture verse vessel village violin virtue visitor vital voice volcano voyage
    wagon walnut wander warm warrior water wealth weather wedding whale wheat wheel whisper
    width willow window winter wisdom wizard wonder wooden world yellow young zebra zero zone
"""

WORDS: tuple[str, ...] = tuple(_TEXT.split())
